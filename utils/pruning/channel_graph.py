"""The channel graph: which convs' output channels are tied, and who consumes them.

Derived from the model by one torch.fx pass with one rule per op type (no per-architecture index tables):
- a conv opens a channel group; a BN right after a conv belongs to it;
- a depthwise conv (groups = in = out) *follows* the group it reads: its output channel i is its input
  channel i, so pruning a channel removes it in the producer, the depthwise conv and its BN; a grouped conv
  with in = out and G conv groups follows the same way, its rows with the group's channels and its columns
  block by block: the group keeps the same count of channels in every conv group (`conv_groups` = G), so the
  narrow conv is again G equal conv groups;
- a BN that is not its conv's own (DenseNet's pre-activation BN reading a concatenation) turns a pruned
  channel's 0 into its bias, so the groups it reads keep their width (role "preact"); channels pass through it;
- a residual add unites the groups of its two inputs;
- squeeze-excite: a gate (a sigmoid or hard sigmoid of a conv on a pooled map) multiplying a feature map
  makes the gate's conv a follower of the gated group (its rows go with the channels they gate), and the
  squeeze conv that reads the pooled map opens the gate's inner width, a group of its own;
- activations that keep 0 at 0 (ReLU, ReLU6, SiLU, Hardswish, GELU, ...), pooling, dropout, flatten and
  stochastic depth (traced in eval mode, where it is the identity) pass channels through;
- a conv or a linear (after flatten, reading a block of columns per channel) consumes them; a linear listed in
  deps (`linears`: the hidden layers of torchvision's classifiers) opens a group of its own, like a conv.
A pruned channel is exactly 0 from its producer's BN to its consumers (every activation on the way keeps 0),
which is what makes dropping it exact. Anything else is refused by name, with the module it sits in. The rules
are in tracing.py; this module assembles what they record into groups with roles.
"""
import math
from dataclasses import dataclass, field
from functools import lru_cache

import torch
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp

from .tracing import (Consumer, LayerCost, Producer, UnsupportedOpError, check_norms, describe, refuse, Source,
                      Tracer)

__all__ = ["PRUNABLE_ROLES", "ChannelGraph", "ChannelGroup", "Consumer", "LayerCost", "Producer", "UnsupportedOpError",
           "arch_graph", "arch_graph_at", "build_channel_graph", "graph_at", "parse_roles"]

# Roles a method may prune (an "output" group feeds the logits directly). `--groups` takes "all" or a
# comma list of these in every method; "internal" (one conv, one consumer) is what ResRep and AOFP prune.
PRUNABLE_ROLES = ("internal", "residual", "stem", "fanout")


@dataclass
class ChannelGroup:
    """Output channels that must be pruned together.

    role: "internal" (one conv, one consumer), "residual" (channels meeting in a residual sum),
    "stem" (the first conv, fanning out into a residual stage), "fanout" (another conv fanning out),
    "preact" (read by a BN that is not its
    conv's own, DenseNet's pre-activation BN: not prunable), "output" (reaches the model's output
    unconsumed; not prunable). A squeeze-excite's squeeze conv does not count as a consumer for the role.

    producers open the channels (their filters are what methods rank, compact and cluster); followers carry
    them on, one row per channel (depthwise and grouped convs reading the group, squeeze-excite gate convs
    multiplying it), and are narrowed, zeroed and averaged with them, never ranked or compacted.
    conv_groups: G when a grouped conv (ResNeXt, RegNet) follows the group: every decision keeps the same count
    of channels in each run of width / G channels, and merges only within a run (utils/pruning/conv_groups.py).
    """
    id: int
    role: str
    width: int
    producers: list[Producer] = field(default_factory=list)
    consumers: list[Consumer] = field(default_factory=list)
    followers: list[Producer] = field(default_factory=list)

    @property
    def conv_groups(self):
        return math.lcm(1, *(p.groups for p in self.followers))

    @property
    def deps_indices(self):
        return [p.index for p in self.producers]

    def rows(self):
        """Every conv (with its BN) whose output rows are this group's channels: producers, then followers."""
        return [*self.producers, *self.followers]


@dataclass
class ChannelGraph:
    convs: list[str]  # module paths in deps order: every conv (and a tv: model's hidden linears)
    groups: list[ChannelGroup]
    layers: list[LayerCost]
    norms: list[LayerCost] = field(default_factory=list)  # pre-activation BNs: params, no MACs

    def group_of(self, conv):
        for g in self.groups:
            if any(p.conv == conv for p in g.rows()):
                return g
        raise KeyError(f"{conv!r} is not a conv of this model")

    def by_role(self, *roles):
        return [g for g in self.groups if g.role in roles]

    def widths(self, deps):
        """Group id -> width, read from a deps list (the first producer's entry)."""
        if len(deps) != len(self.convs):
            raise ValueError(f"deps has {len(deps)} entries but the model has {len(self.convs)} convs")
        return {g.id: int(deps[g.producers[0].index]) for g in self.groups}

    def deps_at(self, deps, widths):
        """`deps` with the given {group id: width} (every producer and follower of a group gets its width)."""
        out = list(deps)
        for gid, width in widths.items():
            for p in self.groups[gid].rows():
                out[p.index] = int(width)
        return out

    def select(self, groups="internal"):
        """The channel groups a `--groups` value names: "all" prunable groups or a comma list of roles."""
        return self.by_role(*parse_roles(groups))


def parse_roles(groups):
    """`--groups` text ("all", "internal", "internal,residual", ...) or a tuple of roles -> tuple of roles."""
    if groups == "all":
        return PRUNABLE_ROLES
    roles = tuple(r.strip() for r in (groups.split(",") if isinstance(groups, str) else groups) if r.strip())
    bad = [r for r in roles if r not in PRUNABLE_ROLES]
    if bad or not roles:
        raise ValueError(f"--groups {groups if isinstance(groups, str) else ','.join(groups)!r}: use 'all' or a "
                         f"comma list of roles from {', '.join(PRUNABLE_ROLES)} (e.g. 'internal')")
    return roles


def build_channel_graph(model, example_input, linears=()):
    """Trace `model` in eval mode (on any device incl. meta; stochastic depth and dropout are then the identity)
    and return its ChannelGraph. `linears`: the nn.Linear module paths that deps lists, beside every conv (in
    module order): their widths are prunable groups."""
    check_norms(model)
    modules = dict(model.named_modules())
    convs = [n for n, m in modules.items() if isinstance(m, nn.Conv2d) or (n in linears and isinstance(m, nn.Linear))]
    was_training = model.training
    model.eval()
    try:
        gm = fx.symbolic_trace(model)
        ShapeProp(gm).propagate(example_input)
    finally:
        model.train(was_training)
    t = Tracer(modules, convs)
    for node in gm.graph.nodes:
        shape = getattr(node.meta.get("tensor_meta"), "shape", None)
        if node.op == "placeholder":
            t.src[node] = Source(fixed=shape[1])
        elif node.op == "output":
            t.output(node)
        elif node.op == "call_module":
            t.src[node] = t.module(node, shape)
        elif node.op in ("call_function", "call_method"):
            t.src[node] = t.function(node)
        elif node.op != "get_attr":
            raise refuse(f"unsupported op {describe(node)}", node)
    traced = {p.conv for ps in t.producers.values() for p in ps}
    missing = [c for c in convs if c not in traced]
    if missing:
        raise UnsupportedOpError(f"channel graph: layer '{missing[0]}' is never called in eval mode (an auxiliary "
                                 "head?); build the model without it")
    return _assemble(convs, t, modules)


def _squeeze_convs(t):
    """The squeeze conv of every gate (it reads the pooled gated map; the gate conv reads its output)."""
    return {p.conv for gate in t.gates for p in t.producers.get(t.in_group_of.get(gate), [])
            if t.in_group_of.get(gate) is not None}


def _assemble(convs, t, modules):
    uf, order = t.uf, {name: i for i, name in enumerate(modules)}
    members = {}
    for g in t.producers:
        members.setdefault(uf.find(g), []).append(g)
    added = {uf.find(g) for g in t.added}
    output_groups = {uf.find(g) for g in t.output_groups}
    preact = {uf.find(g) for g in t.preact}
    squeeze = _squeeze_convs(t)
    openers = lambda r: [p for g in members[r] for p in t.producers[g] if p.conv not in t.followers]  # noqa: E731
    renumber = {root: i for i, root in enumerate(sorted(members, key=lambda r: min(p.index for p in openers(r))))}
    groups = []
    for root, gs in sorted(members.items(), key=lambda kv: renumber[kv[0]]):
        rows = sorted((p for g in gs for p in t.producers[g]), key=lambda p: p.index)
        for p in rows:
            if p.conv in t.bn_of:
                p.bn, p.bn_eps = t.bn_of[p.conv]
        prods = [p for p in rows if p.conv not in t.followers]
        follows = [p for p in rows if p.conv in t.followers]
        cons = sorted((c for g in gs for c in t.consumers.get(g, [])), key=lambda c: order[c.module])
        counted = [c for c in cons if c.module not in squeeze]
        if root in preact:
            role = "preact"
        elif root in added:
            role = "residual"
        elif root in output_groups or not counted:
            role = "output"
        elif len(counted) == 1:
            role = "internal"
        else:
            role = "stem" if any(g in t.fed_by_input for g in gs) else "fanout"
        groups.append(ChannelGroup(renumber[root], role, out_width(modules[prods[0].conv]), prods, cons, follows))
    number = lambda g: renumber[uf.find(g)]  # noqa: E731
    for group in groups:
        for c in group.consumers:
            c.parts = tuple((None if g is None else number(g), f) for g, f in c.parts)
    for lc in [*t.layer_costs, *t.norm_costs]:
        lc.in_parts = tuple(number(g) for g in lc.in_parts)
        lc.in_group = None if lc.in_group is None else renumber[uf.find(lc.in_group)]
        lc.out_group = None if lc.out_group is None else renumber[uf.find(lc.out_group)]
        if lc.kind == "conv":
            lc.bn = lc.module in t.bn_of
    t.layer_costs.sort(key=lambda lc: order[lc.module])
    return ChannelGraph(convs, groups, t.layer_costs, t.norm_costs)


def out_width(m):
    """Output channels of a conv, output units of a linear."""
    return m.out_channels if isinstance(m, nn.Conv2d) else m.out_features


@lru_cache(maxsize=None)
def _arch_graph(arch, num_classes):
    from base_model import build_model, get_arch

    with torch.device("meta"):
        model = build_model(arch, num_classes=num_classes)
        size = get_arch(arch).input_size
        example = torch.empty(1, 3, size, size)
    modules = dict(model.named_modules())
    linears = [n for n in get_arch(arch).deps_names() if isinstance(modules.get(n), nn.Linear)]
    return build_channel_graph(model, example, linears)


def arch_graph(arch, num_classes=None):
    """The channel graph of a registered arch (the same for every deps). Cached; do not mutate."""
    return _arch_graph(arch, num_classes)


def graph_at(graph, deps):
    """The same graph with each group's width read from `deps` (a narrowed model's current widths)."""
    import copy

    if len(deps) != len(graph.convs):
        raise ValueError(f"deps has {len(deps)} entries but the model has {len(graph.convs)} convs")
    g = copy.deepcopy(graph)
    for group in g.groups:
        group.width = int(deps[group.producers[0].index])
    return g


def arch_graph_at(arch, deps, num_classes=None):
    """`arch_graph(arch)` at the widths `deps` (methods that start from an already narrow model)."""
    return graph_at(arch_graph(arch, num_classes), deps)
