"""ResRep: `python rr/exp_resrep.py -a src56` (or `torchrun --nproc_per_node=8 rr/exp_resrep.py -a sres50`).

Starts from a trained base model, inserts identity compactors after the BN of every conv of the pruned
channel groups (`--groups`, internal by default), trains with gradient resetting and mask updates until
the end of the cosine schedule, then converts: writes `finish.hdf5` (the trained model, compactors and
masks inside) and `finish_converted.hdf5` (the narrow conv+BN net with its deps) under
`resrep_models/{arch}_train/`, evaluates the converted net and prints its largest logit difference from
the trained one. Re-running the same command resumes.

The masks stop at `--macs-target` (the original's `--flops-target`) of the base's MACs. With
`--latency-target F` they aim at F of the base's latency instead: a per-layer latency table, measured once
on the run's device at `--latency-batch` and cached (utils/tools/latency_table.py), charges each masked row
its predicted cost; after conversion the converted net is timed against the base (BN fused, fp32, in turns)
and the predicted and measured speed-ups are logged and recorded in the converted file's `conversion`
attribute (`latency`).
"""
from dataclasses import asdict, fields

from rr.compactor import compactor_rule, insert_compactors
from rr.convert import decide
from rr.latency_target import latency_table_for, target_lines, with_latency
from rr.resrep import ResRepConfig, ResRepHook, check_config
from utils.training import skeleton
from utils.training.cli import finite
from utils.training.method import Headline, Method, Setup
from utils.command import arch_folder

# The original recipes (specs/resrep.md 2.4): SGD momentum 0.9 (compactors 0.99, no weight decay),
# weight decay 1e-4, cosine to 0 over the whole run, evaluation every 2 epochs and each of the last 10.
# The original has recipes for src56 and sres50 only; the other depths (and vc) reuse their data set's.
RECIPES = {
    "cifar10": dict(epochs=480, batch_size=64, lr=0.01, schedule="cosine", weight_decay=1e-4, eval_every=2,
                    macs_target=0.471),  # src56: 52.9 % of the MACs pruned
    "imagenet": dict(epochs=180, batch_size=256, lr=0.01, schedule="cosine", weight_decay=1e-4, eval_every=2,
                     macs_target=0.455),  # sres50: 54.5 % pruned
}
BEFORE_MASK_EPOCHS = 5  # no masks in the first 5 epochs: 5*50000//64 = 3906 steps for src56
DEFAULTS = ResRepConfig()


def flags(p):
    r = p.add_argument_group("ResRep (defaults: the paper's recipe)")
    skeleton.add_macs_target(r, "--flops-target", note="src56 0.471, sres50 0.455; --flops-target: the original's "
                                                       "spelling")
    r.add_argument("--lasso-strength", type=finite, help=f"group-lasso gradient strength ({DEFAULTS.lasso_strength})")
    r.add_argument("--mask-interval", type=int, help=f"steps between mask updates ({DEFAULTS.mask_interval})")
    r.add_argument("--before-mask-iters", type=int, help=f"steps before the first mask ({BEFORE_MASK_EPOCHS} epochs)")
    r.add_argument("--begin-granularity", type=int,
                   help=f"most rows masked per update until the target ({DEFAULTS.begin_granularity})")
    r.add_argument("--num-at-least", type=int, help=f"fewest channels a layer keeps ({DEFAULTS.num_at_least})")
    r.add_argument("--latency-target", type=float, metavar="F",
                   help="instead of --macs-target: fraction of the base's latency to keep, as predicted by a "
                        "per-layer table measured on this device at --latency-batch (cached under "
                        "~/.cache/pruning-data/latency)")
    r.add_argument("--latency-batch", type=int, metavar="B",
                   help=f"batch size of the latency table and of the measured speed-up ({DEFAULTS.latency_batch})")
    skeleton.add_groups(r, "internal", "--roles")
    skeleton.add_round_to(r)


def resrep_config(args, **defaults):
    """ResRepConfig: its defaults, then `defaults` (the recipe's), then the flags given."""
    given = {f.name: getattr(args, f.name) for f in fields(ResRepConfig) if getattr(args, f.name) is not None}
    if "latency_target" in given:  # the latency target replaces the MACs target (both given: check_config refuses)
        defaults["macs_target"] = None
    return check_config(ResRepConfig(**{**defaults, **given}))


def validate(args):
    skeleton.check_macs_target(args)  # first: it names the spelling given (--flops-target or --macs-target)
    resrep_config(args)
    skeleton.check_groups(args.arch, args.groups)


def prepare(run):
    """Compactors on the pruned groups; gradient resetting and mask updates as the hook."""
    args, recipe = run.args, RECIPES[run.spec.dataset]
    groups = insert_compactors(run.model, run.graph, args.groups)
    rcfg = resrep_config(args, macs_target=recipe["macs_target"],
                         before_mask_iters=BEFORE_MASK_EPOCHS * run.train.dataset_size // run.cfg.batch_size)
    run.cfg.extra["resrep"] = asdict(rcfg)
    hook = ResRepHook(run.graph, run.model.deps, groups, rcfg, latency_table_for(run, rcfg))
    lines = [f"ResRep on {args.arch} from {run.init}: {sum(pg.group.width for pg in groups)} channels in {len(groups)} "
             f"groups ({args.groups}) carry compactors; {', '.join(f'{k} {v}' for k, v in asdict(rcfg).items())}",
             *target_lines(run, hook, groups)]
    return Setup(hook, compactor_rule(groups), lines, "before ResRep (base weights, identity compactors)")


def latency_note(latency):
    """The footnote's words on a --latency-target run (the other methods aim at the MACs target)."""
    if not latency:
        return ""
    measured = latency.get("measured_speedup")
    return (f" It aimed at {latency['target']:g} of the base's latency at batch {latency['batch']} on "
            f"{latency['device']} (per-layer table), not at the MACs target of its row, which the other methods aim "
            f"at: predicted speed-up {latency['predicted_speedup']:.2f}x"
            + (f", measured {measured:.2f}x at its conversion." if measured is not None else "."))


RESREP = Method(
    "resrep", "ResRep", "rr/exp_resrep.py", __doc__, RECIPES,
    output=lambda args: f"resrep_models/{arch_folder(args.arch)}_train",
    flags=flags, validate=validate, prepare=prepare,
    decide=lambda run: with_latency(run, decide(run.trainer.model, run.setup.hook.groups)),
    latency_target=True,
    # the original's flops_target 0.471 counts the 1x1 projections as 2x2: 0.4677 of our count (docs/DEVIATIONS.md)
    headlines={"src56": Headline("ResRep (ICCV'21)", ("--macs-target", "0.4677", "--groups", "internal"), 0.4677,
                                 52.91, 93.71, 93.71, "landscape.md 2c; resrep.md 4")},
    budgets={
        # src20 on cifar10-mini from the shipped base, 3 epochs: masks from step 39, 32 more rows every 10 steps
        # (the target is met near step 90). 234 steps are too few for the masked rows to decay (largest pruned
        # norm about 0.5), so the converted net loses much of the trained one's accuracy; of the settings tried,
        # lr 0.1 kept the most (docs/RESULTS.md: 58.81 trained, 51.06 converted; lr 0.01: 81.61 and 16.87; lr 0.02
        # with masks from step 0 and lasso 3e-2: 51.95 and 49.13). The study's 1,950 steps decay them (trained
        # 83.13, converted 83.14).
        "demo": ["--epochs", "3", "--lr", "0.1", "--before-mask-iters", "39", "--mask-interval", "10",
                 "--begin-granularity", "32", "--lasso-strength", "5e-3"],
        "smoke": ["--epochs", "1", "--max-steps", "3", "--before-mask-iters", "0", "--mask-interval", "1",
                  "--begin-granularity", "1000"],
        # full CIFAR-10 at batch 128 (390 steps an epoch), 5 epochs: masks from step 390, 16 more rows every 20
        # steps (the target near step 600), masked rows decayed by the end at lr 0.02
        "study": ["--epochs", "5", "--batch-size", "128", "--lr", "0.02", "--before-mask-iters", "390",
                  "--mask-interval", "20", "--begin-granularity", "16", "--lasso-strength", "5e-3"],
    },
    note=lambda conversion, setting: (
        "ResRep: logit diff against the trained net with its masked compactor rows zeroed; the largest norm "
        f"among the pruned rows was {conversion['pruned_row_norm']:.3g} (it decays to 0 over a full run)."
        + latency_note(conversion.get("latency"))),
)
