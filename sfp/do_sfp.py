"""Soft filter pruning: `python sfp/do_sfp.py -a src56` (or under torchrun), from scratch or `--init FILE`.

Trains with the original recipe while zeroing the lowest-norm filters of every pruned channel group
at the start, after every `--epoch-prune` epochs and at the end (`--rate` is the KEEP ratio, as the
original). Then cuts the small model out of the zeroed one through utils.surgery and proves they agree.
Writes under sfp_models/{arch}_train/: finish.hdf5 (the zeroed full-width model; the zeroed channels
in its `sfp_pruned` attribute), finish_converted.hdf5 (the small model, with deps), the resume
checkpoint, config.json and log.txt. Re-running the same command resumes.
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from anywhere

import torch  # noqa: E402

from base_model import build_model, get_arch  # noqa: E402
from sfp.convert import small_model  # noqa: E402
from sfp.flops import depth_of, sfp_cifar_reduction  # noqa: E402
from sfp.zeroing import BN_MODES, SoftFilterZeroing, check_rate, select_groups  # noqa: E402
from utils import dist  # noqa: E402
from utils.channel_graph import arch_graph  # noqa: E402
from utils.cli import add_train_args, run_main, train_config  # noqa: E402
from utils.data import make_loaders  # noqa: E402
from utils.engine import Trainer, evaluate  # noqa: E402
from utils.report import conversion_summary, max_logit_diff  # noqa: E402
from utils.store import load_hdf5, save_hdf5  # noqa: E402

# he-y/soft-filter-pruning's recipes (specs/aofp_sfp.md B2). Its weight decay covers every parameter,
# BN included, and biases get no larger lr. CIFAR: 0.01 for the first epoch, then 0.1, x0.2 at 60/120/160.
RECIPES = {
    "cifar10": dict(epochs=200, batch_size=128, lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4,
                    bn_weight_decay=5e-4, bias_lr_factor=1.0, milestones=(60, 120, 160), gamma=0.2,
                    warmup_epochs=1, warmup="constant", warmup_factor=0.1),
    "imagenet": dict(epochs=100, batch_size=256, lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-4,
                     bn_weight_decay=1e-4, bias_lr_factor=1.0, milestones=(30, 60, 90), gamma=0.1),
}
RATE = 0.7  # keep ratio: the paper's "30 %" (0.6 for its ResNet-56 40 % row)


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-a", "--arch", required=True, help="src20/32/56/110, sres18/34/50/101/152 or vc")
    p.add_argument("--init", help="hdf5 weights to start from (default: from scratch, as the paper)")
    s = p.add_argument_group("SFP")
    s.add_argument("--rate", type=float, default=RATE, help="keep ratio: int(N*(1-rate)) filters are zeroed")
    s.add_argument("--epoch-prune", type=int, default=1, help="epochs between zeroings")
    s.add_argument("--groups", default="all",
                   help="'all' prunable groups (residual-tied groups ranked jointly) or a comma list of "
                        "roles: internal, residual, stem, fanout; 'internal' compares with ResRep/AOFP")
    s.add_argument("--bn-zero", choices=BN_MODES, default=None,
                   help="when to zero the BN weight and bias of zeroed channels too: end (default: soft training "
                        "as the original, then the final zeroed model and the small model agree exactly), always "
                        "(exact all along, but zeroed filters get no gradient, so pruning turns hard), never")
    s.add_argument("--faithful", action="store_true",
                   help="the original's zeroing: conv weights only (= --bn-zero never); the small model then "
                        "drops the BN constants and differs, and both accuracies are reported")
    s.add_argument("--reset-momentum", action="store_true",
                   help="also zero the momentum of zeroed filters (harder pruning; the original keeps it)")
    s.add_argument("--zero-at-start", action=argparse.BooleanOptionalAction, default=True,
                   help="zero once before training, as the original")
    t = p.add_argument_group("recipe knobs beyond the shared ones")
    t.add_argument("--bn-weight-decay", type=float)
    t.add_argument("--bias-lr-factor", type=float)
    t.add_argument("--warmup", choices=["linear", "constant"])
    t.add_argument("--warmup-factor", type=float)
    return add_train_args(p).parse_args(argv)


def check_args(args):
    """Refuse bad input before any data is read or process group formed."""
    spec = get_arch(args.arch)
    check_rate(args.rate)
    select_groups(arch_graph(args.arch), args.groups)
    if args.epoch_prune < 1:
        raise ValueError(f"--epoch-prune {args.epoch_prune}: must be at least 1")
    if args.faithful:
        if args.bn_zero not in (None, "never"):
            raise ValueError(f"--faithful zeroes conv weights only; it contradicts --bn-zero {args.bn_zero}")
        args.bn_zero = "never"
    args.bn_zero = args.bn_zero or "end"
    if args.init and not os.path.isfile(args.init):
        raise FileNotFoundError(f"--init {args.init}: no such file")
    return spec


def main(argv=None):
    args = parse(argv)
    spec = check_args(args)
    args.data = args.data or spec.dataset
    recipe = dict(RECIPES[spec.dataset], output=args.output or os.path.join("sfp_models", f"{args.arch}_train"))
    cfg = train_config(args, recipe)
    ctx = dist.setup(args.device, args.local_rank)
    try:
        torch.manual_seed(cfg.seed)
        model = build_model(args.arch)
        if args.init:
            load_hdf5(model, args.init)
        graph = arch_graph(args.arch)
        hook = SoftFilterZeroing(graph, args.groups, args.rate, args.epoch_prune, bn=args.bn_zero,
                                 reset_momentum=args.reset_momentum, zero_at_start=args.zero_at_start)
        train, val = make_loaders(args.data, args.data_root, cfg.batch_size, ctx.device, ctx.rank, ctx.world_size,
                                  cfg.seed, args.workers, image_size=spec.input_size, num_classes=spec.num_classes)
        trainer = Trainer(cfg, model, train, val, ctx, hooks=[hook])
        zeroed = trainer.fit()  # the last epoch's accuracy after its zeroing, never the best epoch's
        report(args, cfg, ctx, trainer, hook, graph, val, zeroed)
    finally:
        dist.cleanup()


def report(args, cfg, ctx, trainer, hook, graph, val, zeroed):
    """Cut the small model, evaluate it, print the proof and the FLOPs, write both hdf5 files."""
    model = trainer.model
    small, deps = small_model(model, args.arch, graph, hook.pruned)
    small = small.to(ctx.device)
    small_metrics = evaluate(small, val, ctx.device, cfg.amp)  # every rank: it all-reduces
    diff = max_logit_diff(model, small, val)
    info = conversion_summary(args.arch, model.deps, deps, diff)
    if not ctx.is_main:
        return
    mode = {"always": "conv weights and BN weight/bias", "end": "conv weights, and BN weight/bias at the end",
            "never": "conv weights only (faithful)"}[args.bn_zero]
    lines = [f"SFP {args.arch}, rate {args.rate} (keep ratio), groups {args.groups}, zeroed {mode}",
             f"zeroed model: top1 {zeroed['top1']:.2f} top5 {zeroed['top5']:.2f}",
             f"small model:  top1 {small_metrics['top1']:.2f} top5 {small_metrics['top5']:.2f}",
             *info["lines"]]
    depth = depth_of(args.arch)
    if depth is not None:
        lines.append(f"SFP's idealised formula (option-A ResNet-{depth}, conv only): "
                     f"{sfp_cifar_reduction(depth, args.rate):.2%} fewer FLOPs at rate {args.rate} "
                     f"({sfp_cifar_reduction(depth, args.rate, floored=True):.2%} with the floored counts); "
                     f"ours above: {1 - info['macs_ratio']:.2%} fewer MACs")
    out = cfg.output
    pruned = {graph.groups[g].producers[0].conv: v for g, v in hook.pruned.items()}
    save_hdf5(os.path.join(out, "finish.hdf5"), model.state_dict(), deps=model.deps, arch=args.arch,
              metrics=zeroed, sfp_pruned=pruned)
    save_hdf5(os.path.join(out, "finish_converted.hdf5"), small.state_dict(), deps=deps, arch=args.arch,
              metrics=small_metrics, zeroed_metrics=zeroed, max_logit_diff=diff,
              macs=info["macs_after"], params=info["params_after"])
    lines.append(f"-> {os.path.join(out, 'finish.hdf5')}, {os.path.join(out, 'finish_converted.hdf5')}")
    for line in lines:
        trainer.log.log(line)  # console and log.txt


if __name__ == "__main__":
    run_main(main)
