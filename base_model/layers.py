"""The one conv unit every builder uses: `X.conv` + `X.bn` (+ `X.relu`), as the original repos name it."""
from collections import OrderedDict

from torch import nn


def conv_bn(cin, cout, kernel_size, stride=1, relu=False):
    """A bias-free conv followed by BN (and ReLU): state-dict names `conv.weight`, `bn.weight`, ..."""
    layers = OrderedDict(
        conv=nn.Conv2d(cin, cout, kernel_size, stride=stride, padding=kernel_size // 2, bias=False),
        bn=nn.BatchNorm2d(cout),
    )
    if relu:
        layers["relu"] = nn.ReLU(inplace=True)
    return nn.Sequential(layers)


def init_weights(model):
    """He init for convs (fan-out, as torchvision), BN to identity; linears keep PyTorch's default."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    return model


class DepsError(ValueError):
    """A deps list that cannot build the architecture; the message names the entry and the fix."""


def check_deps(arch, deps, expected_len, ties, names):
    """Refuse a deps list of the wrong length, with a non-positive width, or that breaks a residual tie.

    `ties` maps a deps index to the index whose width it must equal (block output -> stage stream).
    `names` gives the module name of each entry, for the message.
    """
    deps = list(deps)
    if len(deps) != expected_len:
        raise DepsError(
            f"{arch}: deps has {len(deps)} entries but must have {expected_len} "
            f"(one output width per conv, in model order: {names[0]}, {names[1]}, ..., {names[-1]})"
        )
    for i, d in enumerate(deps):
        if int(d) != d or d < 1:
            raise DepsError(f"{arch}: deps[{i}] ({names[i]}) is {d!r}; every width must be a positive integer")
    for i, j in ties.items():
        if deps[i] != deps[j]:
            raise DepsError(
                f"{arch}: deps[{i}] ({names[i]}) is {deps[i]} but must equal deps[{j}] ({names[j]}) = {deps[j]}: "
                "their outputs are added in one residual sum, so they must have the same width"
            )
    return [int(d) for d in deps]
