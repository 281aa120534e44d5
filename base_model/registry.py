"""Every architecture by name: its builder, default widths, data set and input size."""
from dataclasses import dataclass
from typing import Callable

from . import cifar_resnet, imagenet_resnet, torchvision_models as tv, vgg


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


def _torchvision(arch):
    """The spec of `tv:NAME`, made on first use (its default deps come from a meta-device build)."""
    import torch

    name, size = tv.parse(arch)
    cifar = name in tv.CIFAR_VARIANTS
    num_classes = 10 if cifar else 1000
    with torch.device("meta"):
        full = tv.full_model(name, num_classes)
    deps, names = [m.out_channels for m in full.modules() if isinstance(m, torch.nn.Conv2d)], tv.conv_names(full)
    return ArchSpec(arch, lambda d, nc: tv.build(arch, d, nc), lambda: list(deps), lambda: list(names),
                    "cifar10" if cifar else "imagenet", num_classes,
                    size or (32 if cifar else tv.INPUT_SIZE.get(name, 224)))


def get_arch(arch):
    if arch not in ARCHS and isinstance(arch, str) and arch.startswith(tv.PREFIX):
        ARCHS[arch] = _torchvision(arch)
    if arch not in ARCHS:
        raise ValueError(f"unknown arch {arch!r}; choose one of: {', '.join(a for a in ARCHS if ':' not in a)}, "
                         f"or tv:NAME[@SIZE] for a torchvision CNN (tv:resnet18, tv:mobilenet_v2_cifar, tv:efficientnet_b0@64, ...)")
    return ARCHS[arch]


def build_model(arch, deps=None, num_classes=None):
    """Build `arch` with the given conv widths (default: the paper's) and number of classes."""
    spec = get_arch(arch)
    return spec.build(deps, spec.num_classes if num_classes is None else num_classes)


def default_deps(arch):
    return get_arch(arch).default_deps()
