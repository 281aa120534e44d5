"""The channel graph: which convs' output channels are tied, and who consumes them.

Derived from the model by one torch.fx pass with one rule per op type (no per-architecture index tables):
- a conv opens a channel group; a BN right after a conv belongs to it;
- a depthwise conv (groups = in = out) *follows* the group it reads: its output channel i is its input
  channel i, so pruning a channel removes it in the producer, the depthwise conv and its BN; a grouped conv
  with in = out follows the same way, whole conv groups at a time (its group's role is "grouped", which no
  method prunes yet: a decision would have to keep whole conv groups);
- a residual add unites the groups of its two inputs;
- squeeze-excite: a gate (a sigmoid or hard sigmoid of a conv on a pooled map) multiplying a feature map
  makes the gate's conv a follower of the gated group (its rows go with the channels they gate), and the
  squeeze conv that reads the pooled map opens the gate's inner width, a group of its own;
- activations that keep 0 at 0 (ReLU, ReLU6, SiLU, Hardswish, GELU, ...), pooling, dropout, flatten and
  stochastic depth (traced in eval mode, where it is the identity) pass channels through;
- a conv or a linear (after flatten, reading a block of columns per channel) consumes them.
A pruned channel is exactly 0 from its producer's BN to its consumers (every activation on the way keeps 0),
which is what makes dropping it exact. Anything else is refused by name, with the module it sits in.
"""
import operator
from dataclasses import dataclass, field
from functools import lru_cache

import torch
import torch.nn.functional as F
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp
from torchvision.ops import stochastic_depth

# Activations with f(0) = 0: a zeroed channel stays zero through them.
ACTIVATIONS = (nn.ReLU, nn.ReLU6, nn.SiLU, nn.Hardswish, nn.GELU, nn.LeakyReLU, nn.ELU, nn.Mish, nn.Tanh)
GATE_MODULES = (nn.Sigmoid, nn.Hardsigmoid)  # f(0) != 0: allowed only as a squeeze-excite gate
PASS_MODULES = (*ACTIVATIONS, nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.Identity, nn.Dropout)
PASS_FUNCTIONS = {F.relu, torch.relu, F.relu6, F.silu, F.hardswish, F.gelu, F.leaky_relu, F.elu, F.mish, torch.tanh,
                  F.max_pool2d, F.avg_pool2d, F.adaptive_avg_pool2d, F.dropout, stochastic_depth}
PASS_METHODS = {"relu", "relu_", "contiguous"}
GATE_FUNCTIONS = {torch.sigmoid, F.sigmoid, F.hardsigmoid}
GATE_METHODS = {"sigmoid", "sigmoid_"}
ADD_FUNCTIONS = {operator.add, operator.iadd, torch.add}
ADD_METHODS = {"add", "add_"}
MUL_FUNCTIONS = {operator.mul, operator.imul, torch.mul}
MUL_METHODS = {"mul", "mul_"}
FLATTEN_FUNCTIONS = {torch.flatten}
MEAN_FUNCTIONS = {torch.mean}
CAT_FUNCTIONS = {torch.cat, torch.concat}
NO_BN_NORMS = (nn.LayerNorm, nn.GroupNorm, nn.InstanceNorm2d)


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
    # When the input is a concatenation: its parts in order, each (group id, 0) or (None, fixed width), and which
    # part this group is; the group's columns start after the current widths of the parts before it.
    parts: tuple = ()
    part: int = 0

    def offset(self, width_of):
        """The input channel where this group's columns start, given `width_of(group id)` (current widths)."""
        return sum(fixed if gid is None else width_of(gid) for gid, fixed in self.parts[:self.part])


@dataclass
class ChannelGroup:
    """Output channels that must be pruned together.

    role: "internal" (one conv, one consumer), "residual" (channels meeting in a residual sum),
    "stem" (the first conv, fanning out into a residual stage), "fanout" (another conv fanning out),
    "grouped" (read by a grouped conv, which no method prunes yet), "output" (reaches the model's output
    unconsumed; not prunable). A squeeze-excite's squeeze conv does not count as a consumer for the role.

    producers open the channels (their filters are what methods rank, compact and cluster); followers carry
    them on, one row per channel (depthwise and grouped convs reading the group, squeeze-excite gate convs
    multiplying it), and are narrowed, zeroed and averaged with them, never ranked or compacted.
    """
    id: int
    role: str
    width: int
    producers: list[Producer] = field(default_factory=list)
    consumers: list[Consumer] = field(default_factory=list)
    followers: list[Producer] = field(default_factory=list)

    @property
    def deps_indices(self):
        return [p.index for p in self.producers]

    def rows(self):
        """Every conv (with its BN) whose output rows are this group's channels: producers, then followers."""
        return [*self.producers, *self.followers]


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
    groups: int = 1  # conv groups: each output reads in/groups channels; 0 = depthwise (one channel each)
    in_parts: tuple = ()  # groups read besides in_group / in_fixed: the parts of a concatenation

    def in_width(self, widths):
        """Input channels at the group widths `widths` ({group id: width})."""
        return (self.in_fixed if self.in_group is None else widths[self.in_group]) + \
            sum(widths[g] for g in self.in_parts)


@dataclass
class ChannelGraph:
    convs: list[str]  # conv module paths in deps order
    groups: list[ChannelGroup]
    layers: list[LayerCost]

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
    gate: str | None = None  # set by a sigmoid: the node that made it (allowed only to multiply a feature map)
    parts: tuple | None = None  # set by a concatenation: ((group id, 0) or (None, fixed width), ...) in order


def _describe(node):
    return f"{node.op} {node.target if isinstance(node.target, str) else getattr(node.target, '__name__', node.target)}"


def _where(node):
    """' in module 'path' (Class)' for the innermost module a node was traced in, or ''."""
    stack = node.meta.get("nn_module_stack") or {}
    if not stack:
        return ""
    path, cls = list(stack.values())[-1]
    return f" in module '{path}' ({getattr(cls, '__name__', cls)})"


def _refuse(what, node):
    return UnsupportedOpError(f"channel graph: {what} at node '{node.name}'{_where(node)}")


def _check_norms(model):
    """One clear line for networks normalised by LayerNorm or GroupNorm (ConvNeXt, the transformers)."""
    if any(isinstance(m, nn.BatchNorm2d) for m in model.modules()):
        return
    other = next(((n, m) for n, m in model.named_modules() if n
                  and (isinstance(m, NO_BN_NORMS) or "LayerNorm" in type(m).__name__)), None)
    if other is not None:
        raise UnsupportedOpError(
            f"channel graph: {type(model).__name__} normalises with {type(other[1]).__name__} ('{other[0]}'), not "
            "BatchNorm after its convs; a per-channel BatchNorm is what narrows exactly, so only BatchNorm CNNs "
            "are supported")


def _is(node, functions, methods):
    return (node.op == "call_function" and node.target in functions) or \
        (node.op == "call_method" and node.target in methods)


def _mean_dims(node):
    """(dims, keepdim) of a mean node, or None when it is not a mean."""
    if not _is(node, MEAN_FUNCTIONS, {"mean"}):
        return None
    dims = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
    keep = node.args[2] if len(node.args) > 2 else node.kwargs.get("keepdim", False)
    dims = (dims,) if isinstance(dims, int) else tuple(dims or ())
    return {d % 4 for d in dims}, keep


class _Tracer:
    """The per-op rules, applied node by node to a traced model (see the module docstring)."""

    def __init__(self, modules, convs):
        self.modules, self.deps_index = modules, {n: i for i, n in enumerate(convs)}
        self.uf, self.src = _Groups(), {}
        self.producers, self.consumers, self.layer_costs = {}, {}, []
        self.added, self.bn_of, self.fed_by_input, self.output_groups = set(), {}, set(), set()
        self.followers, self.grouped, self.gates, self.in_group_of = set(), set(), set(), {}

    def source(self, arg, node):
        if not isinstance(arg, fx.Node) or arg not in self.src:
            raise _refuse(f"cannot follow the input of {_describe(node)}", node)
        return self.src[arg]

    def consume(self, s, name, kind, node):
        """Register `name` as a consumer of the channels of `s`; returns (block, in_group, in_fixed, in_parts)."""
        if s.gate is not None:
            raise _refuse(f"{s.gate} outside a squeeze-excite gate (a pruned channel would become f(0) != 0) "
                          f"read by {kind} '{name}'", node)
        block = 1
        if kind == "linear":
            block = s.block or 1
            if s.block is None and s.group is not None:
                raise _refuse(f"linear '{name}' reads a conv feature map without flatten", node)
        elif s.block is not None:
            raise _refuse(f"conv '{name}' reads a flattened tensor", node)
        if s.parts is not None:
            for i, (gid, _) in enumerate(s.parts):
                if gid is not None:
                    self.consumers.setdefault(gid, []).append(Consumer(name, kind, block, s.parts, i))
            return block, None, sum(f for _, f in s.parts), tuple(g for g, _ in s.parts if g is not None)
        if s.group is not None:
            self.consumers.setdefault(s.group, []).append(Consumer(name, kind, block))
        return block, s.group, s.fixed, ()

    def conv(self, node, name, m, s, shape):
        kh, kw = m.kernel_size
        spatial = shape[2] * shape[3]
        if m.groups == 1:
            _, in_group, in_fixed, in_parts = self.consume(s, name, "conv", node)
            g = self.uf.new()
            self.producers[g] = [Producer(name, None, self.deps_index[name])]
            if s.group is None and s.parts is None:
                self.fed_by_input.add(g)
            self.in_group_of[name] = s.group
            self.layer_costs.append(LayerCost(name, "conv", in_group, in_fixed, g, m.out_channels, kh * kw, spatial,
                                              m.bias is not None, False, 1, in_parts))
            return _Source(group=g)
        kind = "depthwise" if m.groups == m.in_channels == m.out_channels else "grouped"
        if m.in_channels != m.out_channels:
            raise _refuse(f"grouped conv '{name}' (groups={m.groups}) with {m.in_channels} inputs and "
                          f"{m.out_channels} outputs: only grouped convs with as many outputs as inputs are followed",
                          node)
        if s.group is None or s.block is not None or s.gate is not None or s.parts is not None:
            raise _refuse(f"{kind} conv '{name}' (groups={m.groups}) must read a conv feature map", node)
        self.producers[s.group].append(Producer(name, None, self.deps_index[name]))
        self.followers.add(name)
        if kind == "grouped":
            self.grouped.add(s.group)
        self.layer_costs.append(LayerCost(name, "conv", s.group, 0, s.group, m.out_channels, kh * kw, spatial,
                                          m.bias is not None, False, 0 if kind == "depthwise" else m.groups))
        return s

    def module(self, node, shape):
        name, m = node.target, self.modules[node.target]
        s = self.source(node.args[0], node)
        if isinstance(m, nn.Conv2d):
            return self.conv(node, name, m, s, shape)
        if isinstance(m, nn.BatchNorm2d):
            arg = node.args[0]
            if not (arg.op == "call_module" and isinstance(self.modules[arg.target], nn.Conv2d)
                    and len(arg.users) == 1):
                raise _refuse(f"BatchNorm '{name}' must directly follow a conv", node)
            self.bn_of[arg.target] = (name, m.eps)
            return s
        if isinstance(m, nn.Linear):
            block, in_group, in_fixed, in_parts = self.consume(s, name, "linear", node)
            self.layer_costs.append(LayerCost(name, "linear", in_group, in_fixed, None, m.out_features, block, 1,
                                              m.bias is not None, False, 1, in_parts))
            return _Source(fixed=m.out_features)
        if isinstance(m, nn.Flatten):
            return _flatten(s, node, m.start_dim)
        if isinstance(m, GATE_MODULES):
            return _Source(s.group, s.fixed, s.block, f"{type(m).__name__} '{name}'", s.parts)
        if isinstance(m, PASS_MODULES):
            return s
        raise _refuse(f"unsupported module '{name}' ({type(m).__name__}); supported: Conv2d (plain, depthwise, "
                      "grouped), BatchNorm2d, Linear, Flatten, activations, pooling, Identity, Dropout", node)

    def gate(self, node):
        """feature map * gate: the gate's conv follows the gated group; its squeeze conv is not a consumer."""
        a, b = (self.source(x, node) for x in node.args[:2])
        feature, gate = (a, b) if b.gate is not None else (b, a)
        if gate.gate is None or feature.gate is not None or feature.group is None or gate.group is None \
                or feature.block is not None or gate.block is not None or feature.parts or gate.parts:
            raise _refuse(f"product {_describe(node)}: only a feature map times a squeeze-excite gate (a sigmoid of "
                          "a conv) is followed", node)
        gate_convs = [p.conv for p in self.producers[gate.group]]
        if len(gate_convs) != 1:
            raise _refuse(f"product {_describe(node)}: the gate must come from one conv", node)
        self.followers.add(gate_convs[0])
        self.gates.add(gate_convs[0])
        self.uf.union(feature.group, gate.group)
        return feature

    def function(self, node):
        if _is(node, ADD_FUNCTIONS, ADD_METHODS):
            a, b = (self.source(x, node) for x in node.args[:2])
            if a.group is None or b.group is None or a.block is not None or b.block is not None \
                    or a.gate is not None or b.gate is not None or a.parts or b.parts:
                raise _refuse(f"add '{node.name}' must sum two conv feature maps", node)
            self.uf.union(a.group, b.group)
            self.added.add(a.group)
            return a
        if _is(node, MUL_FUNCTIONS, MUL_METHODS):
            return self.gate(node)
        if _is(node, FLATTEN_FUNCTIONS, {"flatten"}):
            start = node.args[1] if len(node.args) > 1 else node.kwargs.get("start_dim", 0)
            return _flatten(self.source(node.args[0], node), node, start)
        mean = _mean_dims(node)
        if mean is not None:
            s = self.source(node.args[0], node)
            if mean[0] != {2, 3} or s.block is not None:
                raise _refuse(f"mean over dims {sorted(mean[0])}: only a global mean over H and W is followed", node)
            return s if mean[1] else _Source(s.group, s.fixed, 1, s.gate, s.parts)
        if _is(node, GATE_FUNCTIONS, GATE_METHODS):
            s = self.source(node.args[0], node)
            return _Source(s.group, s.fixed, s.block, f"{_describe(node)} '{node.name}'", s.parts)
        if _is(node, CAT_FUNCTIONS, set()):
            return self.concat(node)
        if _is(node, PASS_FUNCTIONS, PASS_METHODS):
            return self.source(node.args[0], node)
        raise _refuse(f"unsupported op {_describe(node)}", node)

    def concat(self, node):
        """Channels of a concatenation: each input's, at an offset (the widths of the inputs before it)."""
        tensors = node.args[0]
        dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
        if dim % 4 != 1 or len(node.meta["tensor_meta"].shape) != 4:
            raise _refuse(f"concatenation {_describe(node)} along dim {dim}: only channel concatenation is followed",
                          node)
        parts = []
        for x in tensors:
            s = self.source(x, node)
            if s.block is not None or s.gate is not None:
                raise _refuse(f"concatenation {_describe(node)} of a flattened map or a gate", node)
            parts += s.parts if s.parts is not None else [(s.group, 0) if s.group is not None else (None, s.fixed)]
        return _Source(parts=tuple(parts))

    def output(self, node):
        out = node.args[0]
        for arg in (out if isinstance(out, (tuple, list)) else (out,)):
            if isinstance(arg, fx.Node) and arg in self.src:
                s = self.src[arg]
                if s.gate is not None:
                    raise _refuse(f"{s.gate} outside a squeeze-excite gate reaches the output", node)
                for gid in ([s.group] if s.parts is None else [g for g, _ in s.parts]):
                    if gid is not None:
                        self.output_groups.add(gid)


def build_channel_graph(model, example_input):
    """Trace `model` in eval mode (on any device incl. meta; stochastic depth and dropout are then the identity)
    and return its ChannelGraph."""
    _check_norms(model)
    modules = dict(model.named_modules())
    convs = [n for n, m in modules.items() if isinstance(m, nn.Conv2d)]
    was_training = model.training
    model.eval()
    try:
        gm = fx.symbolic_trace(model)
        ShapeProp(gm).propagate(example_input)
    finally:
        model.train(was_training)
    t = _Tracer(modules, convs)
    for node in gm.graph.nodes:
        shape = getattr(node.meta.get("tensor_meta"), "shape", None)
        if node.op == "placeholder":
            t.src[node] = _Source(fixed=shape[1])
        elif node.op == "output":
            t.output(node)
        elif node.op == "call_module":
            t.src[node] = t.module(node, shape)
        elif node.op in ("call_function", "call_method"):
            t.src[node] = t.function(node)
        elif node.op != "get_attr":
            raise _refuse(f"unsupported op {_describe(node)}", node)
    traced = {p.conv for ps in t.producers.values() for p in ps}
    missing = [c for c in convs if c not in traced]
    if missing:
        raise UnsupportedOpError(f"channel graph: conv '{missing[0]}' is never called in eval mode (an auxiliary "
                                 "head?); build the model without it")
    return _assemble(convs, t, modules)


def _flatten(s, node, start_dim):
    shape = node.args[0].meta["tensor_meta"].shape
    if start_dim != 1 or len(shape) != 4:
        raise _refuse("flatten must flatten an NCHW map from dim 1", node)
    return _Source(group=s.group, fixed=s.fixed, block=shape[2] * shape[3], gate=s.gate, parts=s.parts)


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
    grouped = {uf.find(g) for g in t.grouped}
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
        if root in grouped:
            role = "grouped"
        elif root in added:
            role = "residual"
        elif root in output_groups or not counted:
            role = "output"
        elif len(counted) == 1:
            role = "internal"
        else:
            role = "stem" if any(g in t.fed_by_input for g in gs) else "fanout"
        groups.append(ChannelGroup(renumber[root], role, modules[prods[0].conv].out_channels, prods, cons, follows))
    number = lambda g: renumber[uf.find(g)]  # noqa: E731
    for group in groups:
        for c in group.consumers:
            c.parts = tuple((None if g is None else number(g), f) for g, f in c.parts)
    for lc in t.layer_costs:
        lc.in_parts = tuple(number(g) for g in lc.in_parts)
        lc.in_group = None if lc.in_group is None else renumber[uf.find(lc.in_group)]
        lc.out_group = None if lc.out_group is None else renumber[uf.find(lc.out_group)]
        if lc.kind == "conv":
            lc.bn = lc.module in t.bn_of
    t.layer_costs.sort(key=lambda lc: order[lc.module])
    return ChannelGraph(convs, groups, t.layer_costs)


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
