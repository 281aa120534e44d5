"""Compactors: a 1x1 conv, initialised to the identity, after the BN (and before the ReLU) of every conv
in the channel groups ResRep prunes. The compactor of `X.conv`/`X.bn` is the module `X.compactor`, so
its tensors are `X.compactor.pwc.weight` and `X.compactor.mask`, as in the original repo, and every
base tensor keeps its name: a plain hdf5 file loads into a ResRep model with only compactors missing.

Which groups are pruned is chosen from the channel graph by role ("internal" by default: one conv
whose channels feed one consumer), never by index. All producers of a group share one mask.
"""
from collections import OrderedDict
from dataclasses import dataclass

import torch
from torch import nn

from base_model import build_model
from utils.pruning.channel_graph import arch_graph_at


class Compactor(nn.Module):
    """Q: a width x width 1x1 conv starting at the identity, and a 0/1 mask over its rows (output
    channels). The mask only gates Q's gradient (see resrep.reset_gradients), never the forward."""

    def __init__(self, width):
        super().__init__()
        self.pwc = nn.Conv2d(width, width, 1, bias=False)
        with torch.no_grad():
            self.pwc.weight.copy_(torch.eye(width).reshape(width, width, 1, 1))
        self.register_buffer("mask", torch.ones(width))

    def forward(self, x):
        return self.pwc(x)

    def after_bn(self, bn, inputs, output):
        """Forward hook of a BN that is not in an nn.Sequential (a bound method, so a deep copy of the model
        calls the copy's compactor)."""
        return self.pwc(output)

    def row_norms(self):
        """||q_j||_2 of every row: the channel's importance."""
        return torch.linalg.vector_norm(self.pwc.weight.detach().float(), dim=(1, 2, 3))


@dataclass
class PrunedGroup:
    """A channel group with one compactor per producer conv (conv path -> compactor module path)."""
    group: object  # utils.pruning.channel_graph.ChannelGroup
    paths: dict  # producer conv path -> compactor module path
    modules: dict | None = None  # producer conv path -> Compactor, once inserted into a model

    @property
    def id(self):
        return self.group.id

    def compactors(self):
        return list(self.modules.values())

    def mask(self):
        return self.compactors()[0].mask

    def norms(self):
        """Channel importance: the row norm (root of the summed squares over the group's compactors)."""
        sq = sum(c.row_norms() ** 2 for c in self.compactors())
        return sq.sqrt()

    def set_masked(self, masked):
        """Mask exactly these channels (a fresh mask, so no stale zeros survive an update)."""
        for c in self.compactors():
            m = torch.ones_like(c.mask)
            if len(masked):
                m[torch.as_tensor(list(masked), dtype=torch.long, device=m.device)] = 0
            c.mask.copy_(m)

    def masked(self):
        return (self.mask() == 0).nonzero().flatten().tolist()


def compactor_path(bn):
    """`X.compactor` for the BN `X.bn` of a conv unit (the original repo's name); any other BN `P.name` (torchvision's
    `features.1.conv.0.1`, `layer1.0.bn1`) gets `P.name_compactor`, so two BNs of one parent never collide."""
    parent, _, name = bn.rpartition(".")
    if name == "bn":
        return f"{parent}.compactor" if parent else "compactor"
    return f"{bn}_compactor"


def compactor_layout(graph, groups="internal"):
    """The groups to prune (`--groups`: "all" or roles) and where each compactor lives, from the graph alone. A
    group with a producer without BN (a squeeze-excite's squeeze conv) has nowhere to fold a compactor and is left
    out."""
    out = []
    for group in graph.select(groups):
        if any(p.bn is None for p in group.producers):
            continue
        out.append(PrunedGroup(group, {p.conv: compactor_path(p.bn) for p in group.producers}))
    if not out:
        raise ValueError(f"--groups {groups}: the model has no such channel group with a conv+BN to prune")
    return out


def insert_compactors(model, graph, groups="internal"):
    """Put an identity compactor right after the BN of every producer of the pruned groups (in place).

    In an nn.Sequential (as `conv_bn` and torchvision's Conv2dNormActivation build it) the compactor goes right
    after the BN, so an activation that follows in the same Sequential comes after the compactor; elsewhere a
    forward hook of the BN applies it (compactor_path). Returns the PrunedGroups.
    """
    pruned = compactor_layout(graph, groups)
    for pg in pruned:
        pg.modules = {}
        for p in pg.group.producers:
            parent_path, _, bn_name = p.bn.rpartition(".")
            parent = model.get_submodule(parent_path)
            bn = parent._modules[bn_name]
            comp = Compactor(bn.num_features).to(bn.weight.device, bn.weight.dtype)
            name = pg.paths[p.conv].rpartition(".")[2]
            if name in parent._modules:
                raise ValueError(f"{pg.paths[p.conv]} exists already: the model has compactors")
            if not isinstance(parent, nn.Sequential):
                parent.add_module(name, comp)
                bn.register_forward_hook(comp.after_bn)
                pg.modules[p.conv] = comp
                continue
            children = list(parent._modules.items())
            parent._modules = OrderedDict()
            for child, m in children:
                parent.add_module(child, m)
                if child == bn_name:
                    parent.add_module(name, comp)
            pg.modules[p.conv] = comp
    return pruned


def resrep_model(arch, deps=None, num_classes=None, groups="internal"):
    """A ResRep model of `arch` (identity compactors) and its PrunedGroups; loads finish.hdf5 back."""
    model = build_model(arch, deps, num_classes)
    graph = arch_graph_at(arch, model.deps, num_classes)
    return model, graph, insert_compactors(model, graph, groups)


def compactor_rule(groups, momentum=0.99):
    """Optimizer overrides for compactor kernels: momentum 0.99 and no weight decay."""
    names = {f"{path}.pwc.weight" for pg in groups for path in pg.paths.values()}

    def rule(name, param, module):
        if name in names:
            return {"momentum": momentum, "weight_decay": 0.0}
        return None

    return rule
