"""Soft filter pruning: `python sfp/do_sfp.py -a src56` (or under torchrun), from scratch or `--init FILE`.

Trains with the original recipe while zeroing the lowest-norm filters of every pruned channel group
(`--groups`, all by default) at the start, after every `--epoch-prune` epochs and at the end (`--rate` is
the KEEP ratio, as the original). Then cuts the small model out of the zeroed one through the surgery
module and proves they agree. Writes under sfp_models/{arch}_train/: finish.hdf5 (the zeroed full-width
model), finish_converted.hdf5 (the small model, with deps), the resume checkpoint, config.json and
log.txt. Re-running the same command resumes.
"""
if not __package__:  # run as a file, not as a module: the repository root goes on the path, as with -m
    import os
    import sys
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import argparse
import os

from sfp.convert import decide, kept
from sfp.flops import depth_of, sfp_cifar_reduction
from sfp.zeroing import BN_MODES, SoftFilterZeroing, check_rate
from utils.command import run_main
from utils.pruning.channel_graph import arch_graph
from utils.pruning.flops import count
from utils.training import skeleton
from utils.training.engine import EvaluateStart

# he-y/soft-filter-pruning's recipes (specs/aofp_sfp.md B1, B2). Its weight decay covers every parameter,
# BN included, and biases get no larger lr. CIFAR: 0.01 for the first epoch, then 0.1, x0.2 at 60/120/160.
# It evaluates before the first zeroing and after every epoch's zeroing.
RECIPES = {
    "cifar10": dict(epochs=200, batch_size=128, lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4,
                    bn_weight_decay=5e-4, bias_lr_factor=1.0, milestones=(60, 120, 160), gamma=0.2,
                    warmup_epochs=1, warmup="constant", warmup_factor=0.1, eval_every=1),
    "imagenet": dict(epochs=100, batch_size=256, lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-4,
                     bn_weight_decay=1e-4, bias_lr_factor=1.0, milestones=(30, 60, 90), gamma=0.1, eval_every=1),
}
BN_ZEROED = {"always": "conv weights and BN weight/bias", "end": "conv weights, and BN weight/bias at the end",
             "never": "conv weights only (faithful)"}


def parse(argv=None):
    p = skeleton.parser(__doc__, "hdf5 weights to start from (default: from scratch, as the paper)")
    s = p.add_argument_group("SFP")
    s.add_argument("--rate", type=float, default=0.7,
                   help="keep ratio: int(N*(1-rate)) filters are zeroed (default 0.7, the paper's '30 %%')")
    s.add_argument("--epoch-prune", type=int, default=1,
                   help="zero after epoch e (counted from 0) when e %% epoch-prune == 0, and after the last, as the "
                        "original (default 1: every epoch)")
    skeleton.add_groups(s, "all", note="all, residual-tied groups ranked jointly; 'internal' compares with ResRep")
    skeleton.add_round_to(s)
    s.add_argument("--bn-zero", choices=BN_MODES, default=None,
                   help="when to zero the BN weight and bias of zeroed channels too: end (default: soft training "
                        "as the original, then the final zeroed model and the small model agree exactly), always "
                        "(exact all along, but zeroed filters get no gradient, so pruning turns hard), never")
    s.add_argument("--faithful", action="store_true",
                   help="the original's zeroing: conv weights only (= --bn-zero never); the small model then "
                        "drops the BN constants of the zeroed channels and differs from the zeroed one")
    s.add_argument("--reset-momentum", action="store_true",
                   help="also zero the momentum of zeroed filters (harder pruning; the original keeps it)")
    s.add_argument("--zero-at-start", action=argparse.BooleanOptionalAction, default=True,
                   help="zero once before training, as the original")
    t = p.add_argument_group("recipe knobs beyond the shared ones")
    t.add_argument("--bn-weight-decay", type=float)
    t.add_argument("--bias-lr-factor", type=float)
    t.add_argument("--warmup", choices=["linear", "constant"])
    t.add_argument("--warmup-factor", type=float)
    return skeleton.parse(p, argv)


def check(args):
    """Refuse bad input before any data is read or process group formed."""
    check_rate(args.rate)
    skeleton.check_round_to(args.round_to)
    arch_graph(args.arch).select(args.groups)
    if args.epoch_prune < 1:
        raise ValueError(f"--epoch-prune {args.epoch_prune}: must be at least 1")
    if args.faithful and args.bn_zero not in (None, "never"):
        raise ValueError(f"--faithful zeroes conv weights only; it contradicts --bn-zero {args.bn_zero}")
    args.bn_zero = "never" if args.faithful else args.bn_zero or "end"
    return skeleton.optional_init(args)


def prepare(run):
    a = run.args
    zeroing = SoftFilterZeroing(run.graph, a.groups, a.rate, a.epoch_prune, bn=a.bn_zero,
                                reset_momentum=a.reset_momentum, zero_at_start=a.zero_at_start, round_to=a.round_to)
    return skeleton.Setup([EvaluateStart("before SFP (the starting weights, before the first zeroing)"), zeroing])


def plan(run):
    """Cut at the last zeroing; beside our MACs, SFP's own idealised FLOPs formula, as its paper counts."""
    a, graph, pruned = run.args, run.graph, run.hook.pruned
    lines = [f"SFP {a.arch}, rate {a.rate} (keep ratio), groups {a.groups}, zeroed {BN_ZEROED[a.bn_zero]}"
             + (f", kept widths in multiples of {a.round_to}" if a.round_to > 1 else "")]
    depth = depth_of(a.arch)
    if depth is not None:
        deps = graph.deps_at(run.model.deps, {g: len(d.clusters) for g, d in kept(graph, pruned).items()})
        ours = 1 - count(graph, deps)[0] / count(graph, run.model.deps)[0]
        lines.append(f"SFP's idealised formula (option-A ResNet-{depth}, conv only): "
                     f"{sfp_cifar_reduction(depth, a.rate):.2%} fewer FLOPs at rate {a.rate} "
                     f"({sfp_cifar_reduction(depth, a.rate, floored=True):.2%} with the floored counts); "
                     f"ours: {ours:.2%} fewer MACs")
    return decide(run.trainer.model, graph, pruned, a.bn_zero != "never", lines)


def main(argv=None):
    args = parse(argv)
    skeleton.main(args, RECIPES, os.path.join("sfp_models", f"{args.arch}_train"), name="sfp", label="SFP",
                  init=check, prepare=prepare, decide=plan)


if __name__ == "__main__":
    run_main(main)
