"""The channel graph: which convs' output channels are tied, and who consumes them.

Derived from the model by one torch.fx pass (no per-architecture index tables). Every conv opens a
channel group; a residual add unites the groups of its two inputs; BN, ReLU, pooling and flatten
pass channels through; a conv or a linear (after flatten, reading a block of columns per channel)
consumes them. Anything else is refused by name, so a new architecture fails loudly, not silently.
"""
import operator
from dataclasses import dataclass, field
from functools import lru_cache

import torch
import torch.nn.functional as F
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp

PASS_MODULES = (nn.ReLU, nn.ReLU6, nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.Identity, nn.Dropout)
PASS_FUNCTIONS = {F.relu, torch.relu, F.max_pool2d, F.avg_pool2d, F.adaptive_avg_pool2d, F.dropout}
PASS_METHODS = {"relu", "relu_", "contiguous"}
ADD_FUNCTIONS = {operator.add, operator.iadd, torch.add}
ADD_METHODS = {"add", "add_"}
FLATTEN_FUNCTIONS = {torch.flatten}


# Roles a method may prune (an "output" group feeds the logits directly). `--groups` takes "all" or a
# comma list of these in every method; "internal" (one conv, one consumer) is what ResRep and AOFP prune.
PRUNABLE_ROLES = ("internal", "residual", "stem", "fanout")


class UnsupportedOpError(ValueError):
    """The model uses an op the channel graph cannot follow channels through."""


@dataclass
class Producer:
    conv: str  # module path of the nn.Conv2d
    bn: str | None  # module path of the BatchNorm2d right after it
    index: int  # position in deps
    bn_eps: float = 1e-5


@dataclass
class Consumer:
    module: str  # module path of the consuming nn.Conv2d or nn.Linear
    kind: str  # "conv" or "linear"
    block: int = 1  # input columns per channel (a linear after flatten of a CxHxW map reads H*W per channel)


@dataclass
class ChannelGroup:
    """Output channels that must be pruned together.

    role: "internal" (one conv, one consumer), "residual" (channels meeting in a residual sum),
    "stem" (the first conv, fanning out into a residual stage), "fanout" (another conv fanning out),
    "output" (reaches the model's output unconsumed; not prunable).
    """
    id: int
    role: str
    width: int
    producers: list[Producer] = field(default_factory=list)
    consumers: list[Consumer] = field(default_factory=list)

    @property
    def deps_indices(self):
        return [p.index for p in self.producers]


@dataclass
class LayerCost:
    """What FLOPs and params of one conv or linear depend on: widths in and out, and constants."""
    module: str
    kind: str
    in_group: int | None  # channel group read, or None when the input width is fixed
    in_fixed: int  # the fixed input channels (used when in_group is None)
    out_group: int | None  # channel group written (convs), None for a linear
    out_fixed: int
    kernel: int  # kh*kw for a conv, columns per input channel for a linear
    spatial: int  # output H*W (1 for a linear)
    bias: bool
    bn: bool


@dataclass
class ChannelGraph:
    convs: list[str]  # conv module paths in deps order
    groups: list[ChannelGroup]
    layers: list[LayerCost]

    def group_of(self, conv):
        for g in self.groups:
            if any(p.conv == conv for p in g.producers):
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
        """`deps` with the given {group id: width} (every producer of a group gets its width)."""
        out = list(deps)
        for gid, width in widths.items():
            for p in self.groups[gid].producers:
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


class _Groups:
    """Union-find over per-conv groups."""

    def __init__(self):
        self.parent = []

    def new(self):
        self.parent.append(len(self.parent))
        return len(self.parent) - 1

    def find(self, g):
        while self.parent[g] != g:
            self.parent[g] = self.parent[self.parent[g]]
            g = self.parent[g]
        return g

    def union(self, a, b):
        a, b = self.find(a), self.find(b)
        self.parent[max(a, b)] = min(a, b)


@dataclass(frozen=True)
class _Source:
    """Where a tensor's channels come from: a group, or a fixed width (the image, a linear's output)."""
    group: int | None = None
    fixed: int = 0
    block: int | None = None  # set once flattened: columns per channel


def _describe(node):
    return f"{node.op} {node.target if isinstance(node.target, str) else getattr(node.target, '__name__', node.target)}"


def build_channel_graph(model, example_input):
    """Trace `model` (in eval mode, on any device incl. meta) and return its ChannelGraph."""
    modules = dict(model.named_modules())
    convs = [n for n, m in modules.items() if isinstance(m, nn.Conv2d)]
    deps_index = {n: i for i, n in enumerate(convs)}
    gm = fx.symbolic_trace(model)
    was_training = model.training
    gm.eval()
    ShapeProp(gm).propagate(example_input)
    model.train(was_training)

    uf, src = _Groups(), {}
    producers, consumers, layer_costs, added, bn_of, fed_by_input = {}, {}, [], set(), {}, set()
    output_groups = set()

    def source(arg, node):
        if not isinstance(arg, fx.Node) or arg not in src:
            raise UnsupportedOpError(f"channel graph: cannot follow the input of node '{node.name}' ({_describe(node)})")
        return src[arg]

    def consume(s, name, kind, node):
        block = 1
        if kind == "linear":
            block = s.block or 1
            if s.block is None and s.group is not None:
                raise UnsupportedOpError(f"channel graph: linear '{name}' reads a conv feature map without flatten")
        elif s.block is not None:
            raise UnsupportedOpError(f"channel graph: conv '{name}' reads a flattened tensor")
        if s.group is not None:
            consumers.setdefault(s.group, []).append(Consumer(name, kind, block))
        return block

    for node in gm.graph.nodes:
        shape = getattr(node.meta.get("tensor_meta"), "shape", None)
        if node.op == "placeholder":
            src[node] = _Source(fixed=shape[1])
        elif node.op == "output":
            out = node.args[0]
            for arg in (out if isinstance(out, (tuple, list)) else (out,)):
                if isinstance(arg, fx.Node) and arg in src and src[arg].group is not None:
                    output_groups.add(src[arg].group)
        elif node.op == "call_module":
            name, m = node.target, modules[node.target]
            s = source(node.args[0], node)
            if isinstance(m, nn.Conv2d):
                if m.groups != 1:
                    raise UnsupportedOpError(f"channel graph: grouped conv '{name}' (groups={m.groups}) is not supported")
                consume(s, name, "conv", node)
                g = uf.new()
                producers[g] = [Producer(name, None, deps_index[name])]
                if s.group is None:
                    fed_by_input.add(g)
                kh, kw = m.kernel_size
                layer_costs.append(LayerCost(name, "conv", s.group, s.fixed, g, m.out_channels,
                                             kh * kw, shape[2] * shape[3], m.bias is not None, False))
                src[node] = _Source(group=g)
            elif isinstance(m, nn.BatchNorm2d):
                arg = node.args[0]
                if not (arg.op == "call_module" and isinstance(modules[arg.target], nn.Conv2d) and len(arg.users) == 1):
                    raise UnsupportedOpError(f"channel graph: BatchNorm '{name}' must directly follow a conv")
                bn_of[arg.target] = (name, m.eps)
                src[node] = s
            elif isinstance(m, nn.Linear):
                block = consume(s, name, "linear", node)
                layer_costs.append(LayerCost(name, "linear", s.group, s.fixed, None, m.out_features,
                                             block, 1, m.bias is not None, False))
                src[node] = _Source(fixed=m.out_features)
            elif isinstance(m, nn.Flatten):
                src[node] = _flatten(s, node, m.start_dim)
            elif isinstance(m, PASS_MODULES):
                src[node] = s
            else:
                raise UnsupportedOpError(
                    f"channel graph: unsupported module '{name}' ({type(m).__name__}); supported: Conv2d, "
                    "BatchNorm2d, Linear, Flatten, ReLU, pooling, Identity, Dropout")
        elif node.op in ("call_function", "call_method"):
            fn = node.target
            is_add = fn in ADD_FUNCTIONS if node.op == "call_function" else fn in ADD_METHODS
            if is_add:
                a, b = (source(x, node) for x in node.args[:2])
                if a.group is None or b.group is None or a.block is not None or b.block is not None:
                    raise UnsupportedOpError(f"channel graph: add '{node.name}' must sum two conv feature maps")
                uf.union(a.group, b.group)
                added.add(a.group)
                src[node] = a
            elif (node.op == "call_function" and fn in FLATTEN_FUNCTIONS) or (node.op == "call_method" and fn == "flatten"):
                start = node.args[1] if len(node.args) > 1 else node.kwargs.get("start_dim", 0 if node.op == "call_function" else 0)
                src[node] = _flatten(source(node.args[0], node), node, start)
            elif (node.op == "call_function" and fn in PASS_FUNCTIONS) or (node.op == "call_method" and fn in PASS_METHODS):
                src[node] = source(node.args[0], node)
            else:
                raise UnsupportedOpError(f"channel graph: unsupported op {_describe(node)} at node '{node.name}'")
        else:
            raise UnsupportedOpError(f"channel graph: unsupported op {_describe(node)} at node '{node.name}'")

    return _assemble(convs, uf, producers, consumers, layer_costs, added, bn_of, fed_by_input, output_groups, modules)


def _flatten(s, node, start_dim):
    shape = node.args[0].meta["tensor_meta"].shape
    if start_dim != 1 or len(shape) != 4:
        raise UnsupportedOpError(f"channel graph: flatten at '{node.name}' must flatten an NCHW map from dim 1")
    return _Source(group=s.group, fixed=s.fixed, block=shape[2] * shape[3])


def _assemble(convs, uf, producers, consumers, layer_costs, added, bn_of, fed_by_input, output_groups, modules):
    members = {}
    for g in producers:
        members.setdefault(uf.find(g), []).append(g)
    added = {uf.find(g) for g in added}
    output_groups = {uf.find(g) for g in output_groups}
    renumber = {root: i for i, root in enumerate(sorted(members, key=lambda r: producers[r][0].index))}
    groups = []
    for root, gs in sorted(members.items(), key=lambda kv: renumber[kv[0]]):
        prods = sorted((p for g in gs for p in producers[g]), key=lambda p: p.index)
        for p in prods:
            if p.conv in bn_of:
                p.bn, p.bn_eps = bn_of[p.conv]
        cons = [c for g in gs for c in consumers.get(g, [])]
        cons.sort(key=lambda c: list(modules).index(c.module))
        if root in added:
            role = "residual"
        elif root in output_groups or not cons:
            role = "output"
        elif len(cons) == 1:
            role = "internal"
        else:
            role = "stem" if any(g in fed_by_input for g in gs) else "fanout"
        groups.append(ChannelGroup(renumber[root], role, modules[prods[0].conv].out_channels, prods, cons))
    for lc in layer_costs:
        lc.in_group = None if lc.in_group is None else renumber[uf.find(lc.in_group)]
        lc.out_group = None if lc.out_group is None else renumber[uf.find(lc.out_group)]
        if lc.kind == "conv":
            lc.bn = lc.module in bn_of
    layer_costs.sort(key=lambda lc: list(modules).index(lc.module))
    return ChannelGraph(convs, groups, layer_costs)


@lru_cache(maxsize=None)
def _arch_graph(arch, num_classes):
    from base_model import build_model, get_arch

    with torch.device("meta"):
        model = build_model(arch, num_classes=num_classes)
        size = get_arch(arch).input_size
        example = torch.empty(1, 3, size, size)
    return build_channel_graph(model, example)


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
