"""MACs (what the papers call FLOPs) and parameter counts, for any arch and deps, from the channel graph.

A conv costs Cin/groups*Cout*kh*kw*Hout*Wout MACs (a depthwise conv Cout*kh*kw*Hout*Wout) and a linear
In*Out; BN, activations, pooling, adds and biases cost nothing, as in the papers. Both counts are bilinear in
the group widths, so the cost of any width vector is a sum over the graph's layers, and the change from one
channel is cheap.

Unlike the original ResNet-56 script, which counts the two 1x1 projections as 2x2 kernels
(126,534,272 base MACs), we count them as 1x1: 125,747,840.

    python -m utils.pruning.flops -a src56 [--deps 16,16,...] [--json]
"""
import json
import math
from fractions import Fraction

import torch

from utils.command import ArgumentParser, run_main

from .channel_graph import arch_graph
from .conv_groups import step


def _widths(layer, widths):
    """(inputs per output, outputs): a conv reads Cin/groups*kh*kw values per output (a depthwise conv one
    channel's kh*kw), a linear Cin*block."""
    cin = layer.in_width(widths)
    cout = layer.out_fixed if layer.out_group is None else widths[layer.out_group]
    cin = 1 if layer.groups == 0 else cin // layer.groups
    return cin * layer.kernel, cout


def layer_macs(layer, widths):
    cin, cout = _widths(layer, widths)
    return cin * cout * layer.spatial


def layer_params(layer, widths):
    cin, cout = _widths(layer, widths)
    return cin * cout + (cout if layer.bias else 0) + (2 * cout if layer.bn else 0)


def count(graph, deps):
    """(MACs, params) of the model whose conv widths are `deps`."""
    widths = graph.widths(deps)
    return (sum(layer_macs(lc, widths) for lc in graph.layers),
            sum(layer_params(lc, widths) for lc in graph.layers) +
            sum(lc.kernel * lc.in_width(widths) for lc in graph.norms))


def closest_to_target(graph, base_deps, candidates, target):
    """The (value, deps) among `candidates` whose MACs, as a fraction of `base_deps`' MACs, come nearest
    `target` (ties: fewer MACs): how a method with a width knob rather than a MACs target is aimed."""
    base = count(graph, base_deps)[0]
    return min(candidates, key=lambda c: (abs(count(graph, c[1])[0] / base - target), count(graph, c[1])[0]))


def align(width, full, round_to=1):
    """`--round-to N`: a kept width moved to the nearest multiple of N (halves up), never below N and never
    above `full`, the group's unpruned width (a group of at most N channels stays whole). Convolutions run
    their channels in tiles and vector lanes of 8 or 16, so an irregular width costs nearly as much as the
    next multiple: aligned widths turn saved MACs into saved time."""
    width = min(int(width), int(full))
    if round_to == 1 or full <= round_to:
        return width if round_to == 1 else int(full)
    return min(int(full), max(round_to, round_to * math.floor(width / round_to + 0.5)))


def uniform_deps(graph, deps, groups, ratio, round_to=1):
    """`deps` with every group a `--groups` value selects at floor(ratio * width), at least 1 (then aligned
    to `round_to`): one ratio for every pruned layer (Li et al.'s and Liu et al.'s baselines; C-SGD's floor
    rounding). `ratio` is a Fraction, so that 29/100 of 100 channels is 29, not 28. A group read by a grouped conv
    is aligned to its conv groups too (conv_groups.step)."""
    widths = graph.widths(deps)
    return graph.deps_at(deps, {g.id: align(max(1, math.floor(ratio * widths[g.id])), widths[g.id],
                                            step(g, round_to)) for g in graph.select(groups)})


def uniform_ratio(graph, base_deps, groups, target, round_to=1):
    """(ratio as text, deps): the hundredth whose uniform widths come nearest `target` of the MACs."""
    candidates = [(f"{i / 100:g}", uniform_deps(graph, base_deps, groups, Fraction(i, 100), round_to))
                  for i in range(1, 100)]
    return closest_to_target(graph, base_deps, candidates, target)


def arch_uniform_ratio(arch, target, groups="internal", round_to=1):
    """uniform_ratio from the arch's unpruned widths: what C-SGD's --macs-target and the L1 and scratch baselines'
    solve their one ratio into."""
    from base_model import default_deps

    return uniform_ratio(arch_graph(arch), default_deps(arch), groups, target, round_to)


def arch_cost(arch, deps=None):
    """Summary dict for an arch and deps (default deps when None)."""
    from base_model import build_model, default_deps, get_arch

    deps = list(default_deps(arch) if deps is None else deps)
    get_arch(arch)  # a clear error for an unknown name
    with torch.device("meta"):
        build_model(arch, deps)  # a clear error for bad deps
    base_macs, base_params = count(arch_graph(arch), default_deps(arch))
    macs, params = count(arch_graph(arch), deps)
    return {"arch": arch, "deps": deps, "macs": macs, "params": params,
            "macs_ratio": macs / base_macs, "params_ratio": params / base_params}


def main(argv=None):
    p = ArgumentParser(description=__doc__)
    p.add_argument("-a", "--arch", required=True)
    p.add_argument("--deps", help="comma-separated conv widths (default: the arch's)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    args = p.parse_args(argv)
    try:
        deps = None if args.deps is None else [int(x) for x in args.deps.split(",")]
    except ValueError:
        raise ValueError(f"--deps {args.deps}: expected comma-separated integers") from None
    info = arch_cost(args.arch, deps)
    if args.json:
        print(json.dumps(info))
    else:
        print(f"{info['arch']}: {info['macs']:,} MACs ({info['macs_ratio']:.2%} of base), "
              f"{info['params']:,} params ({info['params_ratio']:.2%} of base)")
        print(f"deps: {info['deps']}")


if __name__ == "__main__":
    run_main(main)
