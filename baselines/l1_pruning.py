"""L1-norm filter pruning (Li et al., "Pruning Filters for Efficient ConvNets", ICLR 2017), the
comparison's first baseline: `python baselines/l1.py -a src56 --init src56_train/finish.hdf5 --ratio 0.5`.

One shot, from a trained model: in every pruned channel group (`--groups`, internal by default) keep the
floor(ratio * width) filters of largest L1 norm (summed over the group's convs), one ratio for every
group (`--ratio`, or the hundredth nearest `--macs-target`); slice them off through the surgery module
and prove the narrow net equals the base with those filters zeroed; then fine-tune the narrow net in its
own folder. Writes under l1_models/{arch}_train/: finish.hdf5 (the base, dropped filters zeroed),
finish_converted.hdf5 (the narrow net, with deps) and finetune/finish.hdf5. Re-running resumes the
fine-tune.
"""
import dataclasses
import os
from fractions import Fraction

import torch

from baselines.plain import TUNE
from utils.pruning.conv_groups import first_per_run
from utils.pruning.flops import arch_uniform_ratio, uniform_deps
from utils.pruning.plan import Plan
from utils.pruning.surgery import keep
from utils.pruning.zeroing import zero_channels
from utils.training import skeleton
from utils.training.cli import fraction
from utils.training.method import Method
from utils.command import arch_folder

# Li et al.'s retraining on CIFAR-10: 40 epochs at a constant lr of 0.001 (their base recipe's SGD
# momentum 0.9, weight decay 1e-4, batch 128); ImageNet: 20 epochs at 0.001.
RECIPES = {
    "cifar10": dict(epochs=40, batch_size=128, lr=0.001, milestones=(), weight_decay=1e-4),
    "imagenet": dict(epochs=20, batch_size=256, lr=0.001, milestones=(), weight_decay=1e-4),
}


def add_ratio_flags(p, what):
    """--ratio or --macs-target, --groups, --round-to: the uniform widths of L1 and of scratch."""
    g = p.add_argument_group(what)
    g.add_argument("--ratio", type=fraction, help="the fraction of every pruned group's filters kept, e.g. 0.5")
    skeleton.add_macs_target(g, own="--ratio")
    skeleton.add_groups(g, "internal")
    skeleton.add_round_to(g)


def solve_ratio(args):
    """One of --ratio and --macs-target, in range; args.ratio the kept fraction (solved from the target)."""
    skeleton.one_of(args, "ratio", "--ratio R")
    skeleton.check_groups(args.arch, args.groups)
    skeleton.check_round_to(args.round_to)
    if args.ratio is not None and not 0 < args.ratio <= 1:
        raise ValueError(f"--ratio {args.ratio}: the kept fraction of each group must be in (0, 1]")
    if args.macs_target is not None:
        skeleton.check_macs_target(args)
        args.ratio = Fraction(solve(args.arch, args.macs_target, args.groups, args.round_to))


def solve(arch, target, groups, round_to=1):
    """The hundredth whose uniform widths come nearest `target` of the MACs (text, e.g. '0.5')."""
    return arch_uniform_ratio(arch, target, groups, round_to)[0]


@torch.no_grad()
def l1_norms(model, group):
    """Per output channel: the L1 norm of its filter, summed over the group's convs."""
    return sum(model.get_submodule(p.conv).weight.detach().abs().flatten(1).sum(1).double().cpu()
               for p in group.producers)


def decide(run):
    """Keep the largest-L1 filters of each group; the reference is the base with the others zeroed."""
    a, graph, model = run.args, run.graph, run.trainer.model
    target = graph.widths(uniform_deps(graph, model.deps, a.groups, a.ratio, a.round_to))
    kept = {g.id: sorted(first_per_run(torch.argsort(l1_norms(model, g), descending=True, stable=True),
                                       target[g.id], g)) for g in graph.select(a.groups)}
    # zeroed in place: finish.hdf5 is then the base as the narrow net computes it
    zero_channels(model, graph, {g: sorted(set(range(graph.groups[g].width)) - set(k)) for g, k in kept.items()})
    line = f"L1 pruning: every {a.groups} group keeps {a.ratio} of its filters, those of largest L1 norm"
    return Plan({g: keep(k) for g, k in kept.items()}, reference_name="the base with the dropped filters zeroed",
                info={"ratio": str(a.ratio)}, lines=[line])


def finetune(run):
    cfg = dataclasses.replace(run.cfg, output=os.path.join(run.cfg.output, "finetune"),
                              extra={"phase": "fine-tune of finish_converted.hdf5", "deps": run.conversion.deps})
    skeleton.train_more(run, cfg, run.conversion.model, "L1 pruned and fine-tuned")


L1 = Method(
    "l1", "L1 + fine-tune", "baselines/l1.py", __doc__, RECIPES,
    output=lambda args: f"l1_models/{arch_folder(args.arch)}_train",
    flags=lambda p: add_ratio_flags(p, "L1 pruning"), validate=solve_ratio, decide=decide, finetune=finetune,
    fit=False, baseline=True, budgets=TUNE, solve=solve,
    note=lambda conversion, ratio: (
        f"L1 + fine-tune (Li et al. 2017): every group keeps {ratio} of its filters, those of largest L1 norm, "
        "in one shot; logit diff between the base with the others zeroed and the narrow net; *final* after "
        "fine-tuning."),
    final="finetune/finish.hdf5", done="finetune/finish.hdf5",
)
