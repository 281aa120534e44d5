"""Soft filter pruning: `python sfp/do_sfp.py -a src56` (or under torchrun), from scratch or `--init FILE`.

Trains with the original recipe while zeroing the lowest-norm filters of every pruned channel group
(`--groups`, all by default) at the start, after every `--epoch-prune` epochs and at the end (`--rate` is
the KEEP ratio, as the original; or `--macs-target F`, solved into the rate whose MACs come nearest F). Then
cuts the small model out of the zeroed one through the surgery module and proves they agree. Writes under
sfp_models/{arch}_train/: finish.hdf5 (the zeroed full-width model), finish_converted.hdf5 (the small model,
with deps), the resume checkpoint, config.json and log.txt. Re-running the same command resumes.
"""
import argparse

from base_model import default_deps
from sfp.convert import decide, kept
from sfp.flops import depth_of, sfp_cifar_reduction
from sfp.zeroing import BN_MODES, SoftFilterZeroing, check_rate, num_pruned
from utils.pruning.channel_graph import arch_graph
from utils.pruning.conv_groups import step
from utils.pruning.flops import closest_to_target, count
from utils.training import skeleton
from utils.training.cli import finite
from utils.training.method import Headline, Method, Setup, optional_start
from utils.command import arch_folder

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
RATE = 0.7  # the paper's "30 %": 30 % of each group's filters zeroed
BN_ZEROED = {"always": "conv weights and BN weight/bias", "end": "conv weights, and BN weight/bias at the end",
             "never": "conv weights only (faithful)"}


def flags(p):
    s = p.add_argument_group("SFP")
    s.add_argument("--rate", type=finite,
                   help=f"keep ratio: int(N*(1-rate)) filters are zeroed (default {RATE}, the paper's '30 %%')")
    skeleton.add_macs_target(s, own="--rate")
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


def rate_for(arch, target, groups="internal", round_to=1):
    """(rate text, deps): the keep rate, in hundredths, whose MACs come nearest the target."""
    graph, base = arch_graph(arch), default_deps(arch)
    cands = [(f"{i / 100:g}", graph.deps_at(base, {g.id: g.width - num_pruned(g.width, i / 100, step(g, round_to))
                                                    for g in graph.select(groups)}))
             for i in range(1, 101)]
    return closest_to_target(graph, base, cands, target)


def validate(args):
    skeleton.check_round_to(args.round_to)
    skeleton.check_groups(args.arch, args.groups)
    if args.rate is not None and args.macs_target is not None:
        skeleton.one_of(args, "rate", "--rate R")
    if args.macs_target is not None:
        skeleton.check_macs_target(args)
        args.rate = float(rate_for(args.arch, args.macs_target, args.groups, args.round_to)[0])
    args.rate = check_rate(RATE if args.rate is None else args.rate)
    if args.epoch_prune < 1:
        raise ValueError(f"--epoch-prune {args.epoch_prune}: must be at least 1")
    if args.faithful and args.bn_zero not in (None, "never"):
        raise ValueError(f"--faithful zeroes conv weights only; it contradicts --bn-zero {args.bn_zero}")
    args.bn_zero = "never" if args.faithful else args.bn_zero or "end"


def prepare(run):
    a = run.args
    zeroing = SoftFilterZeroing(run.graph, a.groups, a.rate, a.epoch_prune, bn=a.bn_zero,
                                reset_momentum=a.reset_momentum, zero_at_start=a.zero_at_start, round_to=a.round_to)
    return Setup(zeroing, evaluate_start="before SFP (the starting weights, before the first zeroing)")


def plan(run):
    """Cut at the last zeroing; beside our MACs, SFP's own idealised FLOPs formula, as its paper counts."""
    a, graph, pruned = run.args, run.graph, run.setup.hook.pruned
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
    p = decide(run.trainer.model, graph, pruned, a.bn_zero != "never", lines)
    p.info["rate"] = a.rate
    return p


SFP = Method(
    "sfp", "SFP", "sfp/do_sfp.py", __doc__, RECIPES,
    output=lambda args: f"sfp_models/{arch_folder(args.arch)}_train",
    flags=flags, validate=validate, start=optional_start, prepare=prepare, decide=plan,
    init_help="hdf5 weights to start from (default: from scratch, as the paper)",
    solve=lambda arch, target, groups, round_to: rate_for(arch, target, groups, round_to)[0],
    # 40 % of the filters zeroed, from a trained base; the paper's 52.6 % is SFP's own formula, which leaves the
    # residual widths whole: zeroing them jointly, as here, removes 61.5 % of our MACs count
    headlines={"src56": Headline("SFP (IJCAI'18)", ("--rate", "0.6", "--groups", "all"), 0.3852, 52.6, 93.59, 93.35,
                                 "aofp_sfp.md B3 (recalled, verify)", "0.6")},
    budgets={
        # from the trained base: lr 0.01 and batch 64 as the others; zeroed channels stay zero, BN included
        # (`end`, the default, lets them regrow on their BN bias, which a few epochs cannot undo: 21 % here)
        "demo": ["--epochs", "3", "--lr", "0.01", "--batch-size", "64", "--warmup-epochs", "0", "--bn-zero", "always"],
        "smoke": ["--epochs", "1", "--max-steps", "3"],
        "study": ["--epochs", "5", "--lr", "0.01", "--batch-size", "128", "--warmup-epochs", "0", "--bn-zero", "always"],
    },
    note=lambda conversion, rate: (
        f"SFP: keep rate {rate}, from the trained base; logit diff between the zeroed net and the small net."),
)
