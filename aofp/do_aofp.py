"""AOFP: `python aofp/do_aofp.py -a vc` (or src56, sres50; or under torchrun).

Starts from a trained base model and keeps training it at a small learning rate while every internal
layer runs AOFP's binary search (aofp/search.py); stops as soon as the MACs fall below the target.
Then slices off the masked filters through utils.surgery, proves the narrow net equals the masked
one, and fine-tunes the narrow net in its own folder. Writes under aofp_models/{arch}_train/:
finish.hdf5 (the masked full-width model, pruned filters zeroed; the kept channels in its
`aofp_keep` attribute), finish_pruned.hdf5 (the narrow model, with deps), and finetune/finish.hdf5
(the fine-tuned narrow model, with deps). Re-running the same command resumes either phase.
"""
import argparse
import dataclasses
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from anywhere, no PYTHONPATH

import torch  # noqa: E402

from aofp.hook import AOFPSearch  # noqa: E402
from aofp.probe import BN_MODES  # noqa: E402
from aofp.prune import pruned_model, zero_pruned  # noqa: E402
from base_model import build_model, get_arch  # noqa: E402
from utils import dist  # noqa: E402
from utils.channel_graph import arch_graph_at  # noqa: E402
from utils.cli import add_train_args, base_weights, run_main, train_config  # noqa: E402
from utils.data import make_loaders  # noqa: E402
from utils.engine import Trainer, evaluate  # noqa: E402
from utils.report import conversion_summary, max_logit_diff  # noqa: E402
from utils.store import load_state, read_hdf5, save_hdf5  # noqa: E402

# The original recipes (specs/aofp_sfp.md A3, A4). Search: SGD momentum 0.9, wd 1e-4 (none on BN and
# biases, biases at 2x lr), lr 1e-3 held constant, batch 64; at most 600 epochs, but the run stops as
# soon as the MACs target is met. Fine-tune of the narrow net: lr 0.01, cosine to 0 over 600 epochs.
SEARCH = dict(epochs=600, batch_size=64, lr=1e-3, milestones=(), weight_decay=1e-4, eval_every=2)
FINETUNE = dict(epochs=600, batch_size=64, lr=0.01, schedule="cosine", weight_decay=1e-4, eval_every=2)
FLOPS_TARGET = {"vc": 0.35, "src56": 0.50}  # fraction of the MACs to keep; other archs: DEFAULT_TARGET
DEFAULT_TARGET = 0.50
ITERS_PER_HALF = 1000  # steps per half of the binary search
THRESH = 0.01  # a half is harmless when every filter's mean damage t is below this
WARMUP = 500  # plain training steps before the first layer starts its search


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-a", "--arch", required=True, help="vc, src20/32/56/110 or sres18/34/50/101/152")
    p.add_argument("--base", help="the trained base model (default: {arch}_train/finish.hdf5, torchvision_res50.hdf5)")
    s = p.add_argument_group("AOFP search (defaults: the original recipe)")
    s.add_argument("--flops-target", type=float,
                   help=f"stop once the MACs fall below this fraction of the base (vc 0.35, src56 0.50, else {DEFAULT_TARGET})")
    s.add_argument("--iters-per-half", type=int, default=ITERS_PER_HALF, help="steps per half of the binary search")
    s.add_argument("--thresh", type=float, default=THRESH, help="damage t below which a half is pruned")
    s.add_argument("--warmup-iters", type=int, default=WARMUP, help="training steps before the first search starts")
    s.add_argument("--bn-mode", choices=BN_MODES, default="base",
                   help="normalise the ablated output with the normal pass's batch statistics (base) or its own "
                        "(own, as the original); BN running statistics are never touched by the ablated pass")
    f = p.add_argument_group("fine-tuning of the narrow net (the shared flags above apply to the search)")
    f.add_argument("--skip-finetune", action="store_true", help="stop after writing finish_pruned.hdf5")
    f.add_argument("--ft-epochs", type=int, default=FINETUNE["epochs"])
    f.add_argument("--ft-lr", type=float, default=FINETUNE["lr"], help="cosine from this to 0")
    f.add_argument("--ft-batch-size", type=int, default=FINETUNE["batch_size"])
    f.add_argument("--ft-weight-decay", type=float, default=FINETUNE["weight_decay"])
    f.add_argument("--ft-eval-every", type=int, default=FINETUNE["eval_every"])
    f.add_argument("--ft-max-steps", type=int, help="stop the fine-tune after this many steps (smoke runs)")
    return add_train_args(p).parse_args(argv)


def check_args(args):
    """Refuse bad input before any data is read or process group formed."""
    spec = get_arch(args.arch)
    if args.flops_target is None:
        args.flops_target = FLOPS_TARGET.get(args.arch, DEFAULT_TARGET)
    if not 0 < args.flops_target <= 1:
        raise ValueError(f"--flops-target {args.flops_target}: the fraction of MACs to keep must be in (0, 1]")
    if args.iters_per_half < 1:
        raise ValueError(f"--iters-per-half {args.iters_per_half}: must be at least 1")
    if not args.thresh > 0:
        raise ValueError(f"--thresh {args.thresh}: must be positive (the damage t is never negative)")
    if args.warmup_iters < 0:
        raise ValueError(f"--warmup-iters {args.warmup_iters}: must not be negative")
    if args.ft_epochs < 1 or args.ft_lr <= 0 or args.ft_batch_size < 1:
        raise ValueError("--ft-epochs, --ft-lr and --ft-batch-size must be positive")
    path, command = base_weights(args.arch)
    if args.base is None:
        if not os.path.isfile(path):
            raise FileNotFoundError(f"no base model at {path}: make it with `{command}` (or pass --base FILE)")
        args.base = path
    elif not os.path.isfile(args.base):
        raise FileNotFoundError(f"--base {args.base}: no such file (the default base is made by `{command}`)")
    return spec


def load_base(args, spec):
    state, deps, _ = read_hdf5(args.base)
    head = [k for k in state if k.endswith(("linear.weight", "fc.weight", "linear2.weight"))]
    num_classes = int(state[head[0]].shape[0]) if head else spec.num_classes
    model = build_model(args.arch, deps, num_classes)
    load_state(model, state, source=args.base)
    return model, num_classes


def main(argv=None):
    args = parse(argv)
    spec = check_args(args)
    args.data = args.data or spec.dataset
    out = args.output or os.path.join("aofp_models", f"{args.arch}_train")
    cfg = train_config(args, dict(SEARCH, output=out), flops_target=args.flops_target)
    ctx = dist.setup(args.device, args.local_rank)
    try:
        torch.manual_seed(cfg.seed)
        model, num_classes = load_base(args, spec)
        graph = arch_graph_at(args.arch, model.deps, num_classes)
        search = AOFPSearch(graph, model.deps, iters_per_half=args.iters_per_half, thresh=args.thresh,
                            warmup=args.warmup_iters, flops_target=args.flops_target, seed=cfg.seed,
                            bn_mode=args.bn_mode)
        train, val = make_loaders(args.data, args.data_root, cfg.batch_size, ctx.device, ctx.rank, ctx.world_size,
                                  cfg.seed, args.workers, image_size=spec.input_size, num_classes=num_classes)
        trainer = Trainer(cfg, model, train, val, ctx, hooks=[search])
        masked = trainer.fit()  # the masked model's accuracy when the search ends
        small = prune(args, cfg, ctx, trainer, search, graph, val, masked, num_classes)
        if not args.skip_finetune:
            finetune(args, cfg, ctx, small, num_classes)
    finally:
        dist.cleanup()


def prune(args, cfg, ctx, trainer, search, graph, val, masked, num_classes):
    """Slice the narrow net out of the masked one, prove they agree, write both files."""
    model, keeps = trainer.model, search.keeps()
    zero_pruned(model, graph, keeps)  # the file's plain model then equals the masked one
    small, deps = pruned_model(model, args.arch, graph, keeps, num_classes)
    small_metrics = evaluate(small, val, ctx.device, cfg.amp)  # every rank: it all-reduces
    diff = max_logit_diff(model, small, val)
    info = conversion_summary(args.arch, model.deps, deps, diff, num_classes)
    if ctx.is_main:
        why = {"target": f"MACs below the target {args.flops_target}", "exhausted": "every layer down to one filter",
               None: "the step limit (the MACs target was not reached)"}[search.stopped]
        lines = [f"AOFP {args.arch}: search ended at step {trainer.step} ({why}) after {len(search.moves)} moves",
                 f"masked model: top1 {masked['top1']:.2f} top5 {masked['top5']:.2f}",
                 f"pruned model: top1 {small_metrics['top1']:.2f} top5 {small_metrics['top5']:.2f}",
                 *info["lines"]]
        finish, pruned = os.path.join(cfg.output, "finish.hdf5"), os.path.join(cfg.output, "finish_pruned.hdf5")
        names = {graph.groups[g].producers[0].conv: idx for g, idx in keeps.items()}
        save_hdf5(finish, model.state_dict(), deps=model.deps, arch=args.arch, metrics=masked, aofp_keep=names)
        save_hdf5(pruned, small.state_dict(), deps=deps, arch=args.arch, metrics=small_metrics, masked_metrics=masked,
                  max_logit_diff=diff, macs=info["macs_after"], params=info["params_after"],
                  macs_ratio=info["macs_ratio"])
        lines.append(f"-> {finish}, {pruned}")
        for line in lines:
            trainer.log.log(line)
    return small


def finetune(args, cfg, ctx, small, num_classes):
    """Train the narrow net in its own folder (the search's files stay as they are), then evaluate it."""
    ft = dataclasses.replace(cfg, **{
        **FINETUNE, "epochs": args.ft_epochs, "lr": args.ft_lr, "batch_size": args.ft_batch_size,
        "weight_decay": args.ft_weight_decay, "eval_every": args.ft_eval_every, "max_steps": args.ft_max_steps,
        "output": os.path.join(cfg.output, "finetune"),
        "extra": {"phase": "fine-tune of finish_pruned.hdf5", "deps": small.deps}})
    train, val = make_loaders(args.data, args.data_root, ft.batch_size, ctx.device, ctx.rank, ctx.world_size,
                              ft.seed, args.workers, image_size=get_arch(args.arch).input_size, num_classes=num_classes)
    metrics = Trainer(ft, small, train, val, ctx).fit()
    if ctx.is_main:
        path = os.path.join(ft.output, "finish.hdf5")
        save_hdf5(path, small.state_dict(), deps=small.deps, arch=args.arch, metrics=metrics)
        print(f"AOFP {args.arch} fine-tuned: top1 {metrics['top1']:.2f} top5 {metrics['top5']:.2f} "
              f"({metrics['samples']} test images) -> {path}")


if __name__ == "__main__":
    run_main(main)
