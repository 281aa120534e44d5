"""The original's width schedules: which groups C-SGD narrows, and to what width at iteration K.

Each entry is an absolute fraction of the arch's original widths (not a step from the previous
iteration). src56 (and the other CIFAR ResNets) slim every group, residual ones included, to
d*13//16, d*11//16, d*5//8 (rounded down, as the original's integer arithmetic); sres50 (and the other
ImageNet ResNets) slim the internal layers to ceil(0.7 d), ..., ceil(0.3 d). vc has no C-SGD schedule
in the original; we give it the CIFAR fractions on its (all internal) layers. Iteration K starts from
iteration K-1's converted net (`iteration_start`).
"""
import math
import os
from dataclasses import dataclass
from fractions import Fraction

from base_model import default_deps, get_arch
from utils.pruning.conv_groups import step
from utils.pruning.flops import align
from utils.training.cli import base_weights
from utils.training.method import optional_start
from utils.training.skeleton import converted_file
from utils.command import arch_folder

ROUNDINGS = ("floor", "ceil")


@dataclass(frozen=True)
class Schedule:
    ratios: tuple  # Fractions of the original widths, one per iteration
    groups: str  # the channel groups slimmed: "all" or roles, as --groups ("internal")
    rounding: str  # "floor" or "ceil"


CIFAR_RESNET = Schedule((Fraction(13, 16), Fraction(11, 16), Fraction(5, 8)), "all", "floor")
IMAGENET_RESNET = Schedule(tuple(Fraction(r) for r in ("0.7", "0.6", "0.5", "0.4", "0.3")), "internal", "ceil")


def default_schedule(arch):
    if arch.startswith("sres") or get_arch(arch).dataset == "imagenet":  # torchvision's ImageNet nets too
        return IMAGENET_RESNET
    if arch == "vc":
        return Schedule(CIFAR_RESNET.ratios, "internal", "floor")
    return CIFAR_RESNET


def parse_ratios(text):
    """'13/16,11/16,5/8' or '0.7,0.6' -> exact Fractions in (0, 1]."""
    try:
        ratios = tuple(Fraction(x.strip()) for x in text.split(",") if x.strip())
    except (ValueError, ZeroDivisionError):
        raise ValueError(f"--ratios {text!r}: expected fractions like 13/16,11/16 or 0.7,0.6") from None
    if not ratios or any(not 0 < r <= 1 for r in ratios):
        raise ValueError(f"--ratios {text!r}: every ratio must be in (0, 1]")
    return ratios


def target_deps(arch, graph, schedule, itr, round_to=1):
    """The deps iteration `itr` trains towards, from the arch's original widths; with `round_to` N the
    cluster counts are moved to the nearest multiple of N (utils.pruning.flops.align)."""
    if not 0 <= itr < len(schedule.ratios):
        raise ValueError(f"-i {itr}: the schedule has iterations 0..{len(schedule.ratios) - 1} "
                         f"(ratios {', '.join(str(r) for r in schedule.ratios)})")
    if schedule.rounding not in ROUNDINGS:
        raise ValueError(f"unknown rounding {schedule.rounding!r}: choose one of {', '.join(ROUNDINGS)}")
    r = schedule.ratios[itr]
    rnd = math.floor if schedule.rounding == "floor" else math.ceil
    deps = list(default_deps(arch))
    for g in graph.select(schedule.groups):
        for p in g.producers:
            deps[p.index] = align(max(1, rnd(r * deps[p.index])), deps[p.index], step(g, round_to))
    return deps


def group_targets(graph, current, target):
    """{group id: target width} for the groups whose width changes from `current` to `target` deps."""
    cur, tgt = graph.widths(current), graph.widths(target)
    for g in graph.groups:
        widths = {target[p.index] for p in g.producers}
        if len(widths) > 1:
            raise ValueError(f"target deps give the tied convs of group {g.id} ({g.producers[0].conv}) "
                             f"different widths {sorted(widths)}; they must share one")
    return {gid: tgt[gid] for gid in cur if tgt[gid] != cur[gid]}


# --- the chain of iterations ------------------------------------------------------------------------
def itr_dir(models_dir, arch, k):
    return os.path.join(models_dir, f"{arch_folder(arch)}_train", f"itr{k}")


def iteration_start(args):
    """The file iteration args.itr starts from: --init, iteration K-1's converted net, or the base model. A
    missing base is fine for -i 0 on a CIFAR net with --train-base: `base_to_train` says so, and the method's
    make_start trains it first with train_base_model.py's recipe."""
    if args.init:
        return optional_start(args)
    if args.itr > 0:
        folder = itr_dir(args.models_dir, args.arch, args.itr - 1)
        prev = converted_file(folder)
        if prev is None:
            raise FileNotFoundError(f"{os.path.join(folder, 'finish_converted.hdf5')} is missing: iteration {args.itr} "
                                    f"starts from iteration {args.itr - 1}; run `python csgd/do_csgd.py -a {args.arch} "
                                    f"-i {args.itr - 1}` first")
        return prev
    path, make = base_weights(args.arch)
    if os.path.exists(path) or base_to_train(args):
        return path
    raise FileNotFoundError(f"{path} (the base model) is missing: make it with `{make}`, or pass --init")


def base_to_train(args):
    """Whether -i 0 trains the missing base first: a CIFAR net, no --init, --train-base (the default)."""
    return (args.itr == 0 and not args.init and args.train_base and get_arch(args.arch).dataset == "cifar10"
            and not os.path.exists(base_weights(args.arch)[0]))
