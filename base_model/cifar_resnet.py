"""CIFAR ResNets `src20/32/56/110`: 16-32-64 widths, basic blocks, 1x1 conv+BN projection shortcuts
at stages 2 and 3 (option B, as the original `src56`).

deps layout, per stage: [head, block0.conv1, block0.conv2, block1.conv1, ...], where the head is
`stage1.conv1` (the 3x3 stem, which carries stage 1's residual stream) or `stageK.projection`.
"""
import torch
from torch import nn

from .layers import check_deps, conv_bn, init_weights

WIDTHS = (16, 32, 64)


def num_blocks(depth):
    if (depth - 2) % 6:
        raise ValueError(f"CIFAR ResNet depth must be 6n+2, got {depth}")
    return (depth - 2) // 6


def default_deps(depth):
    n = num_blocks(depth)
    return [w for w in WIDTHS for _ in range(2 * n + 1)]


def deps_names(depth):
    n = num_blocks(depth)
    names = []
    for s in range(1, 4):
        names.append("stage1.conv1" if s == 1 else f"stage{s}.projection")
        for b in range(n):
            names += [f"stage{s}.block{b}.conv1", f"stage{s}.block{b}.conv2"]
    return names


def residual_ties(depth):
    """Every block's conv2 is added to its stage's stream, whose width is the stage head's."""
    n = num_blocks(depth)
    per = 2 * n + 1
    return {s * per + 2 + 2 * b: s * per for s in range(3) for b in range(n)}


class BasicBranch(nn.Module):
    def __init__(self, cin, mid, cout, stride):
        super().__init__()
        self.conv1 = conv_bn(cin, mid, 3, stride, relu=True)
        self.conv2 = conv_bn(mid, cout, 3)

    def forward(self, x):
        return self.conv2(self.conv1(x))


class CifarStage(nn.Module):
    def __init__(self, cin, stage_deps, stride, first):
        super().__init__()
        width, n = stage_deps[0], (len(stage_deps) - 1) // 2
        self.first = first
        if first:  # the stem conv heads stage 1 and carries its residual stream
            self.conv1 = conv_bn(cin, width, 3)
        else:
            self.projection = conv_bn(cin, width, 1, stride)
        for b in range(n):
            block_cin = width if (first or b > 0) else cin
            block_stride = stride if (b == 0 and not first) else 1
            mid, cout = stage_deps[1 + 2 * b], stage_deps[2 + 2 * b]
            self.add_module(f"block{b}", BasicBranch(block_cin, mid, cout, block_stride))
        self.num_blocks = n

    def forward(self, x):
        if self.first:
            x = torch.relu(self.conv1(x))
            shortcut = x
        else:
            shortcut = self.projection(x)
        for b in range(self.num_blocks):
            x = torch.relu(shortcut + getattr(self, f"block{b}")(x))
            shortcut = x
        return x


class CifarResNet(nn.Module):
    def __init__(self, depth, deps=None, num_classes=10):
        super().__init__()
        arch = f"src{depth}"
        deps = default_deps(depth) if deps is None else deps
        names = deps_names(depth)
        self.deps = check_deps(arch, deps, len(names), residual_ties(depth), names)
        self.num_classes = num_classes
        per = 2 * num_blocks(depth) + 1
        cin = 3
        for s in range(3):
            stage_deps = self.deps[s * per:(s + 1) * per]
            self.add_module(f"stage{s + 1}", CifarStage(cin, stage_deps, 1 if s == 0 else 2, first=(s == 0)))
            cin = stage_deps[0]
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.linear = nn.Linear(cin, num_classes)
        init_weights(self)

    def forward(self, x):
        x = self.stage3(self.stage2(self.stage1(x)))
        return self.linear(torch.flatten(self.gap(x), 1))
