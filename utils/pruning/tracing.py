"""The per-op rules of the channel graph (utils/pruning/channel_graph.py): what a producer, a consumer and a
layer's cost are, and how each op of a torch.fx-traced model moves channels between groups, one rule per op type.
channel_graph.py assembles what these rules record into groups with roles.
"""
import operator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import fx, nn
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


class UnsupportedOpError(ValueError):
    """The model uses an op the channel graph cannot follow channels through."""


@dataclass
class Producer:
    conv: str  # module path of the nn.Conv2d (or of a hidden nn.Linear, listed in deps)
    bn: str | None  # module path of the BatchNorm2d right after it
    index: int  # position in deps
    bn_eps: float = 1e-5
    groups: int = 1  # a grouped follower's conv groups (its columns are mixed block by block); else 1


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
class LayerCost:
    """What FLOPs and params of one conv or linear depend on: widths in and out, and constants."""
    module: str
    kind: str  # "conv", "linear" or "norm" (a pre-activation BN: params only, in ChannelGraph.norms)
    in_group: int | None  # channel group read, or None when the input width is fixed
    in_fixed: int  # the fixed input channels (used when in_group is None)
    out_group: int | None  # channel group written (convs, hidden linears), None for a linear of fixed width
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
class Source:
    """Where a tensor's channels come from: a group, or a fixed width (the image, a linear's output)."""
    group: int | None = None
    fixed: int = 0
    block: int | None = None  # set once flattened: columns per channel
    gate: str | None = None  # set by a sigmoid: the node that made it (allowed only to multiply a feature map)
    parts: tuple | None = None  # set by a concatenation: ((group id, 0) or (None, fixed width), ...) in order


def describe(node):
    return f"{node.op} {node.target if isinstance(node.target, str) else getattr(node.target, '__name__', node.target)}"


def _where(node):
    """' in module 'path' (Class)' for the innermost module a node was traced in, or ''."""
    stack = node.meta.get("nn_module_stack") or {}
    if not stack:
        return ""
    path, cls = list(stack.values())[-1]
    return f" in module '{path}' ({getattr(cls, '__name__', cls)})"


def refuse(what, node):
    return UnsupportedOpError(f"channel graph: {what} at node '{node.name}'{_where(node)}")


def check_norms(model):
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


class Tracer:
    """The per-op rules, applied node by node to a traced model (see the module docstring)."""

    def __init__(self, modules, convs):
        self.modules, self.deps_index = modules, {n: i for i, n in enumerate(convs)}
        self.uf, self.src = _Groups(), {}
        self.producers, self.consumers, self.layer_costs = {}, {}, []
        self.added, self.bn_of, self.fed_by_input, self.output_groups = set(), {}, set(), set()
        self.followers, self.gates, self.in_group_of = set(), set(), {}
        self.preact, self.norm_costs = set(), []

    def source(self, arg, node):
        if not isinstance(arg, fx.Node) or arg not in self.src:
            raise refuse(f"cannot follow the input of {describe(node)}", node)
        return self.src[arg]

    def consume(self, s, name, kind, node):
        """Register `name` as a consumer of the channels of `s`; returns (block, in_group, in_fixed, in_parts)."""
        if s.gate is not None:
            raise refuse(f"{s.gate} outside a squeeze-excite gate (a pruned channel would become f(0) != 0) "
                          f"read by {kind} '{name}'", node)
        block = 1
        if kind == "linear":
            block = s.block or 1
            if s.block is None and s.group is not None:
                raise refuse(f"linear '{name}' reads a conv feature map without flatten", node)
        elif s.block is not None:
            raise refuse(f"conv '{name}' reads a flattened tensor", node)
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
            return Source(group=g)
        kind = "depthwise" if m.groups == m.in_channels == m.out_channels else "grouped"
        if m.in_channels != m.out_channels:
            raise refuse(f"grouped conv '{name}' (groups={m.groups}) with {m.in_channels} inputs and "
                          f"{m.out_channels} outputs: only grouped convs with as many outputs as inputs are followed",
                          node)
        if s.group is None or s.block is not None or s.gate is not None or s.parts is not None:
            raise refuse(f"{kind} conv '{name}' (groups={m.groups}) must read a conv feature map", node)
        self.producers[s.group].append(Producer(name, None, self.deps_index[name],
                                                groups=m.groups if kind == "grouped" else 1))
        self.followers.add(name)
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
            if arg.op == "call_module" and isinstance(self.modules[arg.target], nn.Conv2d) and len(arg.users) == 1:
                self.bn_of[arg.target] = (name, m.eps)
                return s
            return self.preact_norm(node, name, m, s)
        if isinstance(m, nn.Linear):
            return self.linear(node, name, m, s)
        if isinstance(m, nn.Flatten):
            return _flatten(s, node, m.start_dim)
        if isinstance(m, GATE_MODULES):
            return Source(s.group, s.fixed, s.block, f"{type(m).__name__} '{name}'", s.parts)
        if isinstance(m, PASS_MODULES):
            return s
        raise refuse(f"unsupported module '{name}' ({type(m).__name__}); supported: Conv2d (plain, depthwise, "
                      "grouped), BatchNorm2d, Linear, Flatten, activations, pooling, Identity, Dropout", node)

    def linear(self, node, name, m, s):
        """A linear consumes its input; one listed in deps (a hidden layer of torchvision's classifiers) also opens
        a group of its own, read by the next linear one column per unit."""
        block, in_group, in_fixed, in_parts = self.consume(s, name, "linear", node)
        g = None
        if name in self.deps_index:
            g = self.uf.new()
            self.producers[g] = [Producer(name, None, self.deps_index[name])]
        self.layer_costs.append(LayerCost(name, "linear", in_group, in_fixed, g, m.out_features, block, 1,
                                          m.bias is not None, False, 1, in_parts))
        return Source(fixed=m.out_features) if g is None else Source(group=g, block=1)

    def preact_norm(self, node, name, m, s):
        """A BN that is not its conv's own (DenseNet's pre-activation BN on a concatenation): a pruned channel
        would leave it as the BN's bias, so the groups it reads keep their width (role "preact")."""
        if s.block is not None or s.gate is not None or (s.group is None and s.parts is None):
            raise refuse(f"BatchNorm '{name}' must read a conv feature map", node)
        self.preact.update([s.group] if s.parts is None else [g for g, _ in s.parts if g is not None])
        in_group = None if s.parts is not None else s.group
        in_parts = () if s.parts is None else tuple(g for g, _ in s.parts if g is not None)
        fixed = 0 if s.parts is None else sum(f for _, f in s.parts)
        # params only (kernel: 2 per channel when affine); a BN costs no MACs, as in the papers
        self.norm_costs.append(LayerCost(name, "norm", in_group, fixed, None, 0, 2 if m.affine else 0, 0, False,
                                         False, 1, in_parts))
        return s

    def gate(self, node):
        """feature map * gate: the gate's conv follows the gated group; its squeeze conv is not a consumer."""
        a, b = (self.source(x, node) for x in node.args[:2])
        feature, gate = (a, b) if b.gate is not None else (b, a)
        if gate.gate is None or feature.gate is not None or feature.group is None or gate.group is None \
                or feature.block is not None or gate.block is not None or feature.parts or gate.parts:
            raise refuse(f"product {describe(node)}: only a feature map times a squeeze-excite gate (a sigmoid of "
                          "a conv) is followed", node)
        gate_convs = [p.conv for p in self.producers[gate.group]]
        if len(gate_convs) != 1:
            raise refuse(f"product {describe(node)}: the gate must come from one conv", node)
        self.followers.add(gate_convs[0])
        self.gates.add(gate_convs[0])
        self.uf.union(feature.group, gate.group)
        return feature

    def function(self, node):
        if _is(node, ADD_FUNCTIONS, ADD_METHODS):
            a, b = (self.source(x, node) for x in node.args[:2])
            if a.group is None or b.group is None or a.block is not None or b.block is not None \
                    or a.gate is not None or b.gate is not None or a.parts or b.parts:
                raise refuse(f"add '{node.name}' must sum two conv feature maps", node)
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
                raise refuse(f"mean over dims {sorted(mean[0])}: only a global mean over H and W is followed", node)
            return s if mean[1] else Source(s.group, s.fixed, 1, s.gate, s.parts)
        if _is(node, GATE_FUNCTIONS, GATE_METHODS):
            s = self.source(node.args[0], node)
            return Source(s.group, s.fixed, s.block, f"{describe(node)} '{node.name}'", s.parts)
        if _is(node, CAT_FUNCTIONS, set()):
            return self.concat(node)
        if _is(node, PASS_FUNCTIONS, PASS_METHODS):
            return self.source(node.args[0], node)
        raise refuse(f"unsupported op {describe(node)}", node)

    def concat(self, node):
        """Channels of a concatenation: each input's, at an offset (the widths of the inputs before it)."""
        tensors = node.args[0]
        dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
        if dim % 4 != 1 or len(node.meta["tensor_meta"].shape) != 4:
            raise refuse(f"concatenation {describe(node)} along dim {dim}: only channel concatenation is followed",
                          node)
        parts = []
        for x in tensors:
            s = self.source(x, node)
            if s.block is not None or s.gate is not None:
                raise refuse(f"concatenation {describe(node)} of a flattened map or a gate", node)
            parts += s.parts if s.parts is not None else [(s.group, 0) if s.group is not None else (None, s.fixed)]
        return Source(parts=tuple(parts))

    def output(self, node):
        out = node.args[0]
        for arg in (out if isinstance(out, (tuple, list)) else (out,)):
            if isinstance(arg, fx.Node) and arg in self.src:
                s = self.src[arg]
                if s.gate is not None:
                    raise refuse(f"{s.gate} outside a squeeze-excite gate reaches the output", node)
                for gid in ([s.group] if s.parts is None else [g for g, _ in s.parts]):
                    if gid is not None:
                        self.output_groups.add(gid)


def _flatten(s, node, start_dim):
    shape = node.args[0].meta["tensor_meta"].shape
    if start_dim != 1 or len(shape) != 4:
        raise refuse("flatten must flatten an NCHW map from dim 1", node)
    return Source(group=s.group, fixed=s.fixed, block=shape[2] * shape[3], gate=s.gate, parts=s.parts)
