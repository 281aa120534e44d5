"""CIFAR VGG-16 with BN (`vc`): 13 3x3 convs named `stem.conv1..13`, max-pools after convs 2, 4, 7,
10 and 13, then flatten, `linear1` (to 512), ReLU, `linear2`. As the original, the head has no global
pooling: a 32x32 input reaches it at 1x1, so `linear1` reads deps[12] features.
"""
import torch
from torch import nn

from .layers import check_deps, conv_bn, init_weights

DEFAULT_DEPS = [64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512, 512]
POOL_AFTER = (2, 4, 7, 10, 13)
HIDDEN = 512


def default_deps():
    return list(DEFAULT_DEPS)


def deps_names():
    return [f"stem.conv{i}" for i in range(1, 14)]


class VCNet(nn.Module):
    def __init__(self, deps=None, num_classes=10):
        super().__init__()
        deps = default_deps() if deps is None else deps
        self.deps = check_deps("vc", deps, 13, {}, deps_names())
        self.num_classes = num_classes
        self.stem = nn.Sequential()
        cin = 3
        for i, width in enumerate(self.deps, start=1):
            self.stem.add_module(f"conv{i}", conv_bn(cin, width, 3, relu=True))
            if i in POOL_AFTER:
                self.stem.add_module(f"maxpool{POOL_AFTER.index(i) + 1}", nn.MaxPool2d(2))
            cin = width
        self.linear1 = nn.Linear(cin, HIDDEN)
        self.relu = nn.ReLU(inplace=True)
        self.linear2 = nn.Linear(HIDDEN, num_classes)
        init_weights(self)

    def forward(self, x):
        return self.linear2(self.relu(self.linear1(torch.flatten(self.stem(x), 1))))
