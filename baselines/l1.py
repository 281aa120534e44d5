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
if not __package__:  # run as a file, not as a module: the repository root goes on the path, as with -m
    import os
    import sys
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import dataclasses
import os
from fractions import Fraction

import torch

from base_model import default_deps
from utils.command import run_main
from utils.pruning.channel_graph import arch_graph
from utils.pruning.flops import uniform_deps, uniform_ratio
from utils.pruning.surgery import keep
from utils.pruning.zeroing import zero_channels
from utils.training import skeleton

# Li et al.'s retraining on CIFAR-10: 40 epochs at a constant lr of 0.001 (their base recipe's SGD
# momentum 0.9, weight decay 1e-4, batch 128); ImageNet: 20 epochs at 0.001.
RECIPES = {
    "cifar10": dict(epochs=40, batch_size=128, lr=0.001, milestones=(), weight_decay=1e-4),
    "imagenet": dict(epochs=20, batch_size=256, lr=0.001, milestones=(), weight_decay=1e-4),
}


def parse(argv=None):
    p = skeleton.parser(__doc__, "the trained base model (default: src56_train/finish.hdf5, torchvision_res50.hdf5, ...)")
    g = p.add_argument_group("L1 pruning")
    g.add_argument("--ratio", type=Fraction, help="the fraction of every pruned group's filters kept, e.g. 0.5")
    g.add_argument("--macs-target", type=float, help="instead of --ratio: the hundredth whose MACs come nearest")
    skeleton.add_groups(g, "internal")
    skeleton.add_round_to(g)
    return skeleton.parse(p, argv)


def check(args):
    """One of --ratio and --macs-target, in range; the base weights."""
    if (args.ratio is None) == (args.macs_target is None):
        raise ValueError("give the kept fraction with --ratio R or a MACs target with --macs-target T (one of them)")
    if args.ratio is not None and not 0 < args.ratio <= 1:
        raise ValueError(f"--ratio {args.ratio}: the kept fraction of each group must be in (0, 1]")
    if args.macs_target is not None and not 0 < args.macs_target < 1:
        raise ValueError(f"--macs-target {args.macs_target}: the fraction of the MACs to keep must be in (0, 1)")
    arch_graph(args.arch).select(args.groups)
    skeleton.check_round_to(args.round_to)
    return skeleton.required_init(args)


@torch.no_grad()
def l1_norms(model, group):
    """Per output channel: the L1 norm of its filter, summed over the group's convs."""
    return sum(model.get_submodule(p.conv).weight.detach().abs().flatten(1).sum(1).double().cpu()
               for p in group.producers)


def decide(run):
    """Keep the largest-L1 filters of each group; the reference is the base with the others zeroed."""
    a, graph, model = run.args, run.graph, run.trainer.model
    ratio = a.ratio if a.ratio is not None else Fraction(uniform_ratio(graph, default_deps(a.arch), a.groups,
                                                                       a.macs_target, a.round_to)[0])
    target = graph.widths(uniform_deps(graph, model.deps, a.groups, ratio, a.round_to))
    kept = {g.id: sorted(torch.argsort(l1_norms(model, g), descending=True, stable=True)[:target[g.id]].tolist())
            for g in graph.select(a.groups)}
    # zeroed in place: finish.hdf5 is then the base as the narrow net computes it
    zero_channels(model, graph, {g: sorted(set(range(graph.groups[g].width)) - set(k)) for g, k in kept.items()})
    line = f"L1 pruning: every {a.groups} group keeps {ratio} of its filters, those of largest L1 norm"
    return skeleton.Plan({g: keep(k) for g, k in kept.items()}, reference_name="the base with the dropped filters "
                         "zeroed", info={"ratio": str(ratio)}, lines=[line])


def finetune(run):
    cfg = dataclasses.replace(run.cfg, output=os.path.join(run.cfg.output, "finetune"),
                              extra={"phase": "fine-tune of finish_converted.hdf5", "deps": run.conversion.deps})
    skeleton.train_more(run, cfg, run.conversion.model, "L1 pruned and fine-tuned")


def main(argv=None):
    args = parse(argv)
    skeleton.main(args, RECIPES, os.path.join("l1_models", f"{args.arch}_train"), name="l1", label="L1", init=check,
                  fit=False, decide=decide, then=finetune)


if __name__ == "__main__":
    run_main(main)
