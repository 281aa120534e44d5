"""Every architecture by name: its builder, default widths, data set and input size."""
from dataclasses import dataclass
from typing import Callable

from . import cifar_resnet, imagenet_resnet, vgg


@dataclass(frozen=True)
class ArchSpec:
    name: str
    build: Callable  # build(deps, num_classes) -> nn.Module
    default_deps: Callable  # () -> list[int]
    deps_names: Callable  # () -> list[str], the conv of each deps entry
    dataset: str  # "cifar10" or "imagenet"
    num_classes: int
    input_size: int  # the resolution the FLOPs and the papers refer to


def _cifar(depth):
    return ArchSpec(
        f"src{depth}", lambda deps, nc: cifar_resnet.CifarResNet(depth, deps, nc),
        lambda: cifar_resnet.default_deps(depth), lambda: cifar_resnet.deps_names(depth), "cifar10", 10, 32)


def _imagenet(depth):
    return ArchSpec(
        f"sres{depth}", lambda deps, nc: imagenet_resnet.ImageNetResNet(depth, deps, nc),
        lambda: imagenet_resnet.default_deps(depth), lambda: imagenet_resnet.deps_names(depth),
        "imagenet", 1000, 224)


ARCHS = {spec.name: spec for spec in (
    *(_cifar(d) for d in (20, 32, 56, 110)),
    *(_imagenet(d) for d in (18, 34, 50, 101, 152)),
    ArchSpec("vc", lambda deps, nc: vgg.VCNet(deps, nc), vgg.default_deps, vgg.deps_names, "cifar10", 10, 32),
)}


# Arch families resolved by name on first use, registered by the layers above (torchvision's CNNs, "tv:NAME", by
# utils/pruning/torchvision_models.py: their widths come from the channel graph): prefix -> fn(arch) -> ArchSpec.
RESOLVERS = {}


def get_arch(arch):
    prefix = arch.partition(":")[0] + ":" if isinstance(arch, str) and ":" in arch else None
    if arch not in ARCHS and prefix in RESOLVERS:
        ARCHS[arch] = RESOLVERS[prefix](arch)
    if arch not in ARCHS:
        hint = " (tv: archs come with the pruning core: import utils.pruning first)" if prefix == "tv:" else ""
        raise ValueError(f"unknown arch {arch!r}{hint}; choose one of: {', '.join(a for a in ARCHS if ':' not in a)}, "
                         f"or tv:NAME[@SIZE] for a torchvision CNN (tv:resnet18, tv:mobilenet_v2_cifar, "
                         f"tv:efficientnet_b0@64, ...)")
    return ARCHS[arch]


def build_model(arch, deps=None, num_classes=None):
    """Build `arch` with the given conv widths (default: the paper's) and number of classes."""
    spec = get_arch(arch)
    return spec.build(deps, spec.num_classes if num_classes is None else num_classes)


def default_deps(arch):
    return get_arch(arch).default_deps()
