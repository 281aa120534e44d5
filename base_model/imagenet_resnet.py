"""ImageNet ResNets `sres18/34/50/101/152`, equivalent to torchvision's (v1.5: stride on the 3x3).

deps layout: [stem conv1, then per stage: (projection,) block0 convs, block1 convs, ...]. The
projection comes first in its stage, as the original builder creates it before the blocks; stages
whose input already has the right width and resolution (stage 1 of sres18/34) have none, and their
blocks add to the stem's stream.
"""
import torch
from torch import nn

from .layers import check_deps, conv_bn, init_weights

STAGE_BLOCKS = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3), 50: (3, 4, 6, 3), 101: (3, 4, 23, 3), 152: (3, 8, 36, 3)}
BASE_WIDTHS = (64, 128, 256, 512)
STRIDES = (1, 2, 2, 2)


def is_bottleneck(depth):
    return depth >= 50


def _layout(depth):
    """(name, default width) of every conv in deps order, and the residual ties (index -> stream index)."""
    bottleneck = is_bottleneck(depth)
    entries, ties = [("conv1", 64)], {}
    stream, cin = 0, 64  # deps index whose width the current residual stream has
    for s, (n, w, stride) in enumerate(zip(STAGE_BLOCKS[depth], BASE_WIDTHS, STRIDES), start=1):
        cout = w * 4 if bottleneck else w
        if stride != 1 or cin != cout:
            stream = len(entries)
            entries.append((f"stage{s}.projection", cout))
        convs = ("conv1", "conv2", "conv3") if bottleneck else ("conv1", "conv2")
        for b in range(n):
            for c in convs:
                entries.append((f"stage{s}.block{b}.{c}", cout if c == convs[-1] else w))
            ties[len(entries) - 1] = stream
        cin = cout
    return entries, ties


def default_deps(depth):
    return [w for _, w in _layout(depth)[0]]


def deps_names(depth):
    return [name for name, _ in _layout(depth)[0]]


def residual_ties(depth):
    return _layout(depth)[1]


class Bottleneck(nn.Module):
    def __init__(self, cin, widths, stride):
        super().__init__()
        self.conv1 = conv_bn(cin, widths[0], 1, relu=True)
        self.conv2 = conv_bn(widths[0], widths[1], 3, stride, relu=True)
        self.conv3 = conv_bn(widths[1], widths[2], 1)

    def forward(self, x):
        return self.conv3(self.conv2(self.conv1(x)))


class Basic(nn.Module):
    def __init__(self, cin, widths, stride):
        super().__init__()
        self.conv1 = conv_bn(cin, widths[0], 3, stride, relu=True)
        self.conv2 = conv_bn(widths[0], widths[1], 3)

    def forward(self, x):
        return self.conv2(self.conv1(x))


class ResNetStage(nn.Module):
    def __init__(self, cin, stage_deps, stride, has_projection, per_block):
        super().__init__()
        block_cls = Bottleneck if per_block == 3 else Basic
        i = 0
        if has_projection:
            self.projection = conv_bn(cin, stage_deps[0], 1, stride)
            i = 1
        self.num_blocks = (len(stage_deps) - i) // per_block
        for b in range(self.num_blocks):
            widths = stage_deps[i + b * per_block:i + (b + 1) * per_block]
            self.add_module(f"block{b}", block_cls(cin, widths, stride if b == 0 else 1))
            cin = widths[-1]
        self.has_projection = has_projection

    def forward(self, x):
        shortcut = self.projection(x) if self.has_projection else x
        for b in range(self.num_blocks):
            x = torch.relu(shortcut + getattr(self, f"block{b}")(x))
            shortcut = x
        return x


class ImageNetResNet(nn.Module):
    def __init__(self, depth, deps=None, num_classes=1000):
        super().__init__()
        if depth not in STAGE_BLOCKS:
            raise ValueError(f"ImageNet ResNet depth must be one of {sorted(STAGE_BLOCKS)}, got {depth}")
        names = deps_names(depth)
        deps = default_deps(depth) if deps is None else deps
        self.deps = check_deps(f"sres{depth}", deps, len(names), residual_ties(depth), names)
        self.num_classes = num_classes
        per_block = 3 if is_bottleneck(depth) else 2
        self.conv1 = conv_bn(3, self.deps[0], 7, 2, relu=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        i, cin = 1, self.deps[0]
        for s in range(1, 5):
            has_projection = names[i] == f"stage{s}.projection"
            n = (1 if has_projection else 0) + STAGE_BLOCKS[depth][s - 1] * per_block
            stage = ResNetStage(cin, self.deps[i:i + n], STRIDES[s - 1], has_projection, per_block)
            self.add_module(f"stage{s}", stage)
            cin, i = self.deps[i + n - 1], i + n
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)
        init_weights(self)

    def forward(self, x):
        x = self.maxpool(self.conv1(x))
        x = self.stage4(self.stage3(self.stage2(self.stage1(x))))
        return self.fc(torch.flatten(self.gap(x), 1))
