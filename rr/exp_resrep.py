"""ResRep: `python rr/exp_resrep.py -a src56` (or `torchrun --nproc_per_node=8 rr/exp_resrep.py -a sres50`).

Starts from a trained base model, inserts identity compactors after the BN of every internal conv,
trains with gradient resetting and mask updates until the end of the cosine schedule, then converts:
writes `finish.hdf5` (the trained model, compactors and masks inside) and `finish_converted.hdf5`
(the narrow conv+BN net with its deps) under `resrep_models/{arch}_train/`, evaluates the converted
net and prints its largest logit difference from the trained one. Re-running the same command resumes.
"""
import argparse
import os
import sys
from dataclasses import asdict, fields

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from anywhere, no PYTHONPATH

import torch  # noqa: E402

from base_model import build_model, get_arch  # noqa: E402
from rr.compactor import DEFAULT_ROLES, compactor_rule, graph_at, insert_compactors  # noqa: E402
from rr.convert import SMALL_NORM, convert_state, pruned_row_norm, zero_masked_rows  # noqa: E402
from rr.resrep import ResRepConfig, ResRepHook  # noqa: E402
from utils import dist  # noqa: E402
from utils.channel_graph import arch_graph  # noqa: E402
from utils.cli import add_train_args, base_weights, run_main, train_config  # noqa: E402
from utils.data import make_loaders  # noqa: E402
from utils.engine import Hook, Trainer, evaluate  # noqa: E402
from utils.report import conversion_summary, max_logit_diff  # noqa: E402
from utils.store import load_state, read_hdf5, save_hdf5  # noqa: E402

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
RESREP_DEFAULTS = ResRepConfig()


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-a", "--arch", required=True, help="src20/32/56/110, sres18/34/50/101/152 or vc")
    p.add_argument("--init", help="base weights (default: src56_train/finish.hdf5, torchvision_res50.hdf5, ...)")
    r = p.add_argument_group("ResRep (defaults: the paper's recipe)")
    r.add_argument("--flops-target", type=float, help="fraction of the base MACs to keep (src56 0.471, sres50 0.455)")
    r.add_argument("--lasso-strength", type=float,
                   help=f"group-lasso gradient strength ({RESREP_DEFAULTS.lasso_strength})")
    r.add_argument("--mask-interval", type=int, help=f"steps between mask updates ({RESREP_DEFAULTS.mask_interval})")
    r.add_argument("--before-mask-iters", type=int, help=f"steps before the first mask ({BEFORE_MASK_EPOCHS} epochs)")
    r.add_argument("--begin-granularity", type=int,
                   help=f"most rows masked per update until the target ({RESREP_DEFAULTS.begin_granularity})")
    r.add_argument("--num-at-least", type=int, help=f"fewest channels a layer keeps ({RESREP_DEFAULTS.num_at_least})")
    r.add_argument("--roles", type=lambda s: tuple(x for x in s.split(",") if x),
                   help=f"channel-group roles to prune (default: {','.join(DEFAULT_ROLES)})")
    return add_train_args(p).parse_args(argv)


def resrep_config(args, recipe, steps_before_mask):
    values = {"flops_target": recipe["flops_target"], "before_mask_iters": steps_before_mask}
    for f in fields(ResRepConfig):
        if getattr(args, f.name, None) is not None:
            values[f.name] = getattr(args, f.name)
    return ResRepConfig(**values)


def load_base(arch, path, make_cmd):
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: no such file; make the base model with `{make_cmd}`, or pass --init PATH")
    state, deps, _ = read_hdf5(path)
    model = build_model(arch, deps)
    load_state(model, state, source=path)
    return model


class EvalFirst(Hook):
    """Evaluate once before the first step, as the original: the base accuracy, compactors included."""

    def on_start(self, trainer):
        if trainer.step == 0:
            m = trainer.evaluate()
            trainer.log.log(f"before ResRep (base weights, identity compactors): top1 {m['top1']:.2f} "
                            f"top5 {m['top5']:.2f} loss {m['loss']:.4f}")


def convert_and_check(trainer, arch, graph, groups, num_classes):
    """Write finish.hdf5 and finish_converted.hdf5; evaluate the converted net and print the proof."""
    model, ctx, log, out = trainer.model, trainer.ctx, trainer.log, trainer.cfg.output
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    if ctx.is_main:
        save_hdf5(os.path.join(out, "finish.hdf5"), state, deps=model.deps, arch=arch, metrics=trainer.metrics)
    narrow_state, new_deps = convert_state(state, graph, groups)
    converted = build_model(arch, new_deps, num_classes)
    load_state(converted, narrow_state, source="the converted weights")
    converted.to(trainer.device)
    metrics = evaluate(converted, trainer.val_loader, trainer.device, trainer.cfg.amp)
    diff = max_logit_diff(zero_masked_rows(model, groups), converted, trainer.val_loader)
    info = conversion_summary(arch, model.deps, new_deps, diff, num_classes)
    norm = pruned_row_norm(groups)
    n = sum(len(pg.masked()) for pg in groups)
    log.log(f"converting: {n} masked rows pruned; the largest norm among them is {norm:.3g}")
    if norm > SMALL_NORM:
        raw = max_logit_diff(model, converted, trainer.val_loader)
        log.log(f"warning: pruned rows with norms up to {norm:.3g} (> {SMALL_NORM:g}) had not decayed, so the "
                f"converted net differs from the trained one by up to {raw:.3g} in logits; the masked rows "
                "vanish only when training runs to the end of the cosine schedule")
    for line in info["lines"]:
        log.log(line + (" (trained net with its masked rows zeroed)" if line.startswith("max |logit") else ""))
    path = os.path.join(out, "finish_converted.hdf5")
    if ctx.is_main:
        save_hdf5(path, narrow_state, deps=new_deps, arch=arch, metrics=metrics,
                  conversion={k: v for k, v in info.items() if k != "lines"}, pruned_row_norm=norm)
    log.log(f"trained: top1 {trainer.metrics['top1']:.2f}; converted: top1 {metrics['top1']:.2f} "
            f"top5 {metrics['top5']:.2f} on {metrics['samples']} images -> {path}")
    return metrics, info


def main(argv=None):
    args = parse(argv)
    spec = get_arch(args.arch)
    args.data = args.data or spec.dataset
    recipe = RECIPES[spec.dataset]
    cfg = train_config(args, dict(recipe, output=args.output or os.path.join("resrep_models", f"{args.arch}_train")))
    ctx = dist.setup(args.device, args.local_rank)
    try:
        torch.manual_seed(cfg.seed)
        init, make_cmd = base_weights(args.arch)
        init = args.init or init
        model = load_base(args.arch, init, make_cmd)
        graph = graph_at(arch_graph(args.arch, spec.num_classes), model.deps)
        groups = insert_compactors(model, graph, args.roles or DEFAULT_ROLES)
        train, val = make_loaders(args.data, args.data_root, cfg.batch_size, ctx.device, ctx.rank, ctx.world_size,
                                  cfg.seed, args.workers, image_size=spec.input_size, num_classes=spec.num_classes)
        rcfg = resrep_config(args, recipe, BEFORE_MASK_EPOCHS * train.dataset_size // cfg.batch_size)
        cfg.extra.update(resrep=asdict(rcfg), init=init)
        hook = ResRepHook(graph, model.deps, groups, rcfg)
        trainer = Trainer(cfg, model, train, val, ctx, hooks=[EvalFirst(), hook], param_rule=compactor_rule(groups))
        trainer.log.log(f"ResRep on {args.arch} from {init}: {sum(pg.group.width for pg in groups)} channels in "
                        f"{len(groups)} groups ({', '.join(args.roles or DEFAULT_ROLES)}) carry compactors; "
                        f"{', '.join(f'{k} {v}' for k, v in asdict(rcfg).items())}")
        trainer.fit()
        metrics, info = convert_and_check(trainer, args.arch, graph, groups, spec.num_classes)
        if ctx.is_main:
            print(f"{args.arch} ResRep on {args.data}: converted top1 {metrics['top1']:.2f}, MACs "
                  f"{info['macs_ratio']:.2%} of base, max logit diff {info['max_logit_diff']:.3g} -> "
                  f"{os.path.join(cfg.output, 'finish_converted.hdf5')}")
    finally:
        dist.cleanup()


if __name__ == "__main__":
    run_main(main)
