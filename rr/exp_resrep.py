"""ResRep: `python rr/exp_resrep.py -a src56` (or `torchrun --nproc_per_node=8 rr/exp_resrep.py -a sres50`).

Starts from a trained base model, inserts identity compactors after the BN of every conv of the pruned
channel groups (`--groups`, internal by default), trains with gradient resetting and mask updates until
the end of the cosine schedule, then converts: writes `finish.hdf5` (the trained model, compactors and
masks inside) and `finish_converted.hdf5` (the narrow conv+BN net with its deps) under
`resrep_models/{arch}_train/`, evaluates the converted net and prints its largest logit difference from
the trained one. Re-running the same command resumes.

With `--latency-target F` the masks aim at F of the base's latency instead of a fraction of its MACs: a
per-layer latency table, measured once on the run's device at `--latency-batch` and cached
(utils/tools/latency_table.py), charges each masked row its predicted cost; after conversion the converted
net is timed against the base (BN fused, fp32, in turns) and the predicted and measured speed-ups are logged
and recorded in the converted file's `conversion` attribute (`latency`).
"""
if not __package__:  # run as a file, not as a module: the repository root goes on the path, as with -m
    import os
    import sys
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import os
from dataclasses import asdict, fields

from rr.compactor import compactor_rule, insert_compactors
from rr.convert import decide
from rr.latency_target import latency_table_for, target_lines, with_latency
from rr.resrep import ResRepConfig, ResRepHook, check_config
from utils.command import run_main
from utils.training import skeleton
from utils.training.engine import EvaluateStart

# The original recipes (specs/resrep.md 2.4): SGD momentum 0.9 (compactors 0.99, no weight decay),
# weight decay 1e-4, cosine to 0 over the whole run, evaluation every 2 epochs and each of the last 10.
# The original has recipes for src56 and sres50 only; the other depths (and vc) reuse their data set's.
RECIPES = {
    "cifar10": dict(epochs=480, batch_size=64, lr=0.01, schedule="cosine", weight_decay=1e-4, eval_every=2,
                    flops_target=0.471),  # src56: 52.9 % of the MACs pruned
    "imagenet": dict(epochs=180, batch_size=256, lr=0.01, schedule="cosine", weight_decay=1e-4, eval_every=2,
                     flops_target=0.455),  # sres50: 54.5 % pruned
}
BEFORE_MASK_EPOCHS = 5  # no masks in the first 5 epochs: 5*50000//64 = 3906 steps for src56
DEFAULTS = ResRepConfig()


def parse(argv=None):
    p = skeleton.parser(__doc__, "base weights (default: src56_train/finish.hdf5, torchvision_res50.hdf5, ...)")
    r = p.add_argument_group("ResRep (defaults: the paper's recipe)")
    r.add_argument("--flops-target", type=float, help="fraction of the base MACs to keep (src56 0.471, sres50 0.455)")
    r.add_argument("--lasso-strength", type=float, help=f"group-lasso gradient strength ({DEFAULTS.lasso_strength})")
    r.add_argument("--mask-interval", type=int, help=f"steps between mask updates ({DEFAULTS.mask_interval})")
    r.add_argument("--before-mask-iters", type=int, help=f"steps before the first mask ({BEFORE_MASK_EPOCHS} epochs)")
    r.add_argument("--begin-granularity", type=int,
                   help=f"most rows masked per update until the target ({DEFAULTS.begin_granularity})")
    r.add_argument("--num-at-least", type=int, help=f"fewest channels a layer keeps ({DEFAULTS.num_at_least})")
    r.add_argument("--latency-target", type=float, metavar="F",
                   help="instead of --flops-target: fraction of the base's latency to keep, as predicted by a "
                        "per-layer table measured on this device at --latency-batch (cached under "
                        "~/.cache/pruning-data/latency)")
    r.add_argument("--latency-batch", type=int, metavar="B",
                   help=f"batch size of the latency table and of the measured speed-up ({DEFAULTS.latency_batch})")
    skeleton.add_groups(r, "internal", "--roles")
    skeleton.add_round_to(r)
    return skeleton.parse(p, argv)


def resrep_config(args, **defaults):
    """ResRepConfig: its defaults, then `defaults` (the recipe's), then the flags given."""
    given = {f.name: getattr(args, f.name) for f in fields(ResRepConfig) if getattr(args, f.name) is not None}
    if "latency_target" in given:  # the latency target replaces the MACs target (both given: check_config refuses)
        defaults["flops_target"] = None
    return check_config(ResRepConfig(**{**defaults, **given}))


def check(args):
    """Refuse a ResRep flag out of range before any data is read or file written; the base weights."""
    resrep_config(args)
    return skeleton.required_init(args)


def prepare(run):
    """Compactors on the pruned groups; gradient resetting and mask updates as the hook."""
    args, recipe = run.args, RECIPES[run.spec.dataset]
    groups = insert_compactors(run.model, run.graph, args.groups)
    rcfg = resrep_config(args, flops_target=recipe["flops_target"],
                         before_mask_iters=BEFORE_MASK_EPOCHS * run.train.dataset_size // run.cfg.batch_size)
    run.cfg.extra["resrep"] = asdict(rcfg)
    table = latency_table_for(run, rcfg)
    hook = ResRepHook(run.graph, run.model.deps, groups, rcfg, table)
    lines = [f"ResRep on {args.arch} from {run.init}: {sum(pg.group.width for pg in groups)} channels in {len(groups)} "
             f"groups ({args.groups}) carry compactors; {', '.join(f'{k} {v}' for k, v in asdict(rcfg).items())}",
             *target_lines(run, hook, groups)]
    return skeleton.Setup([EvaluateStart("before ResRep (base weights, identity compactors)"), hook],
                          compactor_rule(groups), lines)


def main(argv=None):
    args = parse(argv)
    skeleton.main(args, RECIPES, os.path.join("resrep_models", f"{args.arch}_train"), name="resrep",
                  label="ResRep", init=check, prepare=prepare,
                  decide=lambda run: with_latency(run, decide(run.trainer.model, run.hook.groups)))


if __name__ == "__main__":
    run_main(main)
