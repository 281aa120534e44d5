from collections import Counter

import pytest
import torch
from torch import nn

from helpers import FlattenNet
from utils.pruning.channel_graph import UnsupportedOpError, arch_graph, build_channel_graph


def roles(arch):
    return Counter(g.role for g in arch_graph(arch).groups)


def test_group_counts_from_the_issue():
    assert roles("src56") == {"internal": 27, "residual": 3}
    assert roles("sres50") == {"internal": 32, "residual": 4, "stem": 1}
    assert roles("vc") == {"internal": 13}


def test_src56_groups():
    g = arch_graph("src56")
    internal = [grp.deps_indices for grp in g.by_role("internal")]
    assert internal == [[i] for i in [*range(1, 18, 2), *range(20, 37, 2), *range(39, 56, 2)]]
    res = g.by_role("residual")
    assert [grp.deps_indices for grp in res] == [[0, *range(2, 19, 2)], [19, *range(21, 38, 2)],
                                                [38, *range(40, 57, 2)]]
    assert res[0].producers[0].conv == "stage1.conv1.conv" and res[0].producers[0].bn == "stage1.conv1.bn"
    # the stage-1 stream feeds every block's conv1 and both heads of stage 2
    assert [c.module for c in res[0].consumers] == [f"stage1.block{b}.conv1.conv" for b in range(9)] + \
        ["stage2.projection.conv", "stage2.block0.conv1.conv"]
    last = res[2].consumers[-1]
    assert (last.module, last.kind, last.block) == ("linear", "linear", 1)
    assert [c.module for c in g.groups[1].consumers] == ["stage1.block0.conv2.conv"]


def test_sres_groups():
    g = arch_graph("sres50")
    stem = g.by_role("stem")[0]
    assert stem.deps_indices == [0]
    assert [c.module for c in stem.consumers] == ["stage1.projection.conv", "stage1.block0.conv1.conv"]
    assert [grp.deps_indices for grp in g.by_role("residual")] == [
        [1, 4, 7, 10], [11, 14, 17, 20, 23], [24, 27, 30, 33, 36, 39, 42], [43, 46, 49, 52]]
    internal = [i for grp in g.by_role("internal") for i in grp.deps_indices]
    assert internal == [2, 3, 5, 6, 8, 9, 12, 13, 15, 16, 18, 19, 21, 22, 25, 26, 28, 29, 31, 32, 34, 35, 37, 38,
                        40, 41, 44, 45, 47, 48, 50, 51]
    # sres18 has no stage-1 projection: the stem joins stage 1's residual sum
    g18 = arch_graph("sres18")
    assert Counter(grp.role for grp in g18.groups) == {"internal": 8, "residual": 4}
    assert g18.by_role("residual")[0].deps_indices == [0, 2, 4]


def test_vc_chain_into_linear():
    g = arch_graph("vc")
    assert [grp.deps_indices for grp in g.groups] == [[i] for i in range(13)]
    assert [(c.module, c.kind, c.block) for c in g.groups[12].consumers] == [("linear1", "linear", 1)]
    assert g.groups[3].consumers[0].module == "stem.conv5.conv"


def test_linear_block_after_flatten():
    g = build_channel_graph(FlattenNet(), torch.randn(1, 3, 6, 6))
    assert [(c.module, c.block) for c in g.groups[1].consumers] == [("fc", 9)]
    fc = g.layers[-1]
    assert (fc.kind, fc.in_group, fc.kernel, fc.out_fixed) == ("linear", 1, 9, 2)


class Concat(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 4, 3)
        self.b = nn.Conv2d(3, 4, 3)

    def forward(self, x):
        return torch.cat([self.a(x), self.b(x)], 1)


class ConcatThenBN(Concat):
    def __init__(self):
        super().__init__()
        self.bn = nn.BatchNorm2d(8)

    def forward(self, x):
        return self.bn(super().forward(x))


class ImageBN(nn.Module):
    def __init__(self):
        super().__init__()
        self.bn = nn.BatchNorm2d(3)

    def forward(self, x):
        return self.bn(x)


def test_a_bn_on_a_concatenation_keeps_the_widths_it_reads():
    """A BN that is not its conv's own turns a dropped channel's 0 into its bias: the groups it reads are "preact"
    (not prunable), and its parameters are counted."""
    from utils.pruning.flops import count

    graph = build_channel_graph(ConcatThenBN(), torch.randn(1, 3, 8, 8))
    assert [g.role for g in graph.groups] == ["preact", "preact"] and not graph.select("all")
    assert [(n.module, n.kind, n.in_parts) for n in graph.norms] == [("bn", "norm", (0, 1))]
    assert count(graph, [4, 4])[1] == sum(p.numel() for p in ConcatThenBN().parameters())


class Grouped(nn.Module):
    def __init__(self):
        super().__init__()
        self.dw = nn.Conv2d(4, 4, 3, groups=4)

    def forward(self, x):
        return self.dw(x)


class Sigmoid(nn.Module):
    def __init__(self):
        super().__init__()
        self.c = nn.Conv2d(4, 4, 3)
        self.act = nn.Sigmoid()

    def forward(self, x):
        return self.act(self.c(x))


class AddImage(nn.Module):
    def __init__(self):
        super().__init__()
        self.c = nn.Conv2d(3, 3, 3, padding=1)

    def forward(self, x):
        return x + self.c(x)


class Inner(nn.Module):
    def forward(self, x):
        return x.permute(0, 2, 3, 1)


class Permute(nn.Module):
    def __init__(self):
        super().__init__()
        self.c = nn.Conv2d(3, 3, 3, padding=1)
        self.inner = Inner()

    def forward(self, x):
        return self.inner(self.c(x))


class LayerNormNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.c = nn.Conv2d(3, 8, 3)
        self.norm = nn.LayerNorm(8)

    def forward(self, x):
        return self.norm(self.c(x).permute(0, 2, 3, 1))


@pytest.mark.parametrize("model,channels,message", [
    (ImageBN(), 3, r"BatchNorm 'bn' must read a conv feature map at node 'bn' in module 'bn'"),
    (Grouped(), 4, r"depthwise conv 'dw' \(groups=4\) must read a conv feature map at node 'dw' in module 'dw'"),
    (Sigmoid(), 4, r"Sigmoid 'act' outside a squeeze-excite gate reaches the output"),
    (AddImage(), 3, r"add 'add' must sum two conv feature maps"),
    (Permute(), 3, r"unsupported op call_method permute at node 'permute' in module 'inner' \(Inner\)"),
    (LayerNormNet(), 3, r"LayerNormNet normalises with LayerNorm \('norm'\), not BatchNorm"),
])
def test_unsupported_ops_are_named(model, channels, message):
    with pytest.raises(UnsupportedOpError, match=message):
        build_channel_graph(model, torch.randn(1, channels, 8, 8))
