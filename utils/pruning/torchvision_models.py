"""torchvision's classification CNNs as archs `tv:NAME` (`tv:resnet18`, `tv:mobilenet_v2`, ...), at any deps;
`tv:NAME@SIZE` trains and counts FLOPs at SIZE-pixel inputs (default: the size torchvision's weights use).

The network is torchvision's own module: `torchvision.models.get_model(NAME, weights=None)` at full width,
then every conv, BN and linear that a channel group reaches is replaced by one of the widths `deps` gives
(read through the channel graph: a conv's input width is its input group's, a depthwise conv's groups are
its width). So a narrow network is a plain torchvision module with narrower layers, its state-dict names are
torchvision's, and `deps` (stored in every hdf5 file) rebuilds it with no new constructor arguments.

`tv:NAME_cifar` is the CIFAR variant where one exists (CIFAR_VARIANTS): 10 classes, 32-pixel inputs, and the
early downsampling that would leave a 1x1 map set to stride 1 (for MobileNetV2 the stem and the first
stride-2 block, as the usual CIFAR MobileNetV2), documented in docs/TORCHVISION.md.
"""
import functools

import torch
from torch import nn

from base_model import registry
from base_model.layers import DepsError, check_deps

PREFIX = "tv:"
# torchvision constructors that need arguments to give one eval-mode output (no auxiliary heads)
KWARGS = {"googlenet": {"aux_logits": False, "init_weights": True},
          "inception_v3": {"aux_logits": False, "init_weights": True}}
INPUT_SIZE = {"inception_v3": 299}


def _mobilenet_v2_cifar(model):
    model.features[0][0].stride = (1, 1)
    model.features[2].conv[1][0].stride = (1, 1)
    return model


CIFAR_VARIANTS = {"mobilenet_v2_cifar": ("mobilenet_v2", _mobilenet_v2_cifar)}


def _regnet_widths_on_cpu():
    """RegNet computes its stage widths with tensors, which a meta-device build (how the channel graph and the
    default deps are read without allocating) cannot turn into ints: compute them on the CPU."""
    from torchvision.models import regnet

    make = regnet.BlockParams.from_init_params.__func__
    if getattr(make, "_on_cpu", False):
        return

    def on_cpu(cls, *args, **kwargs):
        with torch.device("cpu"):
            return make(cls, *args, **kwargs)
    on_cpu._on_cpu = True
    regnet.BlockParams.from_init_params = classmethod(on_cpu)


def parse(arch):
    """'tv:resnet18' -> ('resnet18', None); 'tv:resnet18@64' -> ('resnet18', 64): the input size the data and the
    FLOPs use (torchvision's nets pool adaptively, so any size from 32 runs; tests use small ones)."""
    name, _, size = arch[len(PREFIX):].partition("@")
    if size and not (size.isdigit() and int(size) >= 16):
        raise ValueError(f"{arch}: the part after '@' is the input size in pixels, at least 16 (tv:resnet18@64)")
    return name, int(size) if size else None


def tv_name(arch):
    """'tv:resnet18@64' -> 'resnet18'."""
    return parse(arch)[0]


def available():
    """Every torchvision classification model name, and the CIFAR variants."""
    import torchvision

    return sorted(torchvision.models.list_models(module=torchvision.models)) + sorted(CIFAR_VARIANTS)


def full_model(name, num_classes):
    """torchvision's `name` at full width, random weights (the constructor's own initialisation)."""
    import torchvision

    base, adapt = CIFAR_VARIANTS.get(name, (name, None))
    if base not in torchvision.models.list_models(module=torchvision.models):
        raise ValueError(f"unknown torchvision model {name!r} (tv:{name}); torchvision {torchvision.__version__} has: "
                         f"{', '.join(available())}")
    _regnet_widths_on_cpu()
    model = torchvision.models.get_model(base, weights=None, num_classes=num_classes, **KWARGS.get(base, {}))
    if type(model).__name__ == "MNASNet":
        # MNASNet refuses a state dict without its version metadata (a plain dict, an hdf5 file); version 2, the
        # current layout, is a plain load
        model._load_from_state_dict = functools.partial(nn.Module._load_from_state_dict, model)
    return adapt(model) if adapt else model


def deps_layers(model):
    """(path, module) of every deps entry: each conv, and each linear but the last (the classifier's hidden
    layers, VGG's and MobileNetV3's, whose widths are prunable), in module order."""
    linears = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)][:-1]
    return [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Conv2d) or n in linears]


def widths_of(model):
    return [m.out_channels if isinstance(m, nn.Conv2d) else m.out_features for _, m in deps_layers(model)]


@torch.no_grad()
def _replace(model, path, new):
    """Put `new` at `path`, initialised with the leading block of the old module's tensors: torchvision's own
    initialisation of that layer, cut to the narrow shape (what a from-scratch run of the narrow net starts at)."""
    parent, _, child = path.rpartition(".")
    old = model.get_submodule(path)
    new = new.to(next(iter(old.state_dict().values())).device)
    for key, t in new.state_dict().items():
        src = old.state_dict()[key]
        t.copy_(src[tuple(slice(0, n) for n in t.shape)] if t.dim() else src)
    setattr(model.get_submodule(parent) if parent else model, child, new)


# roles whose width a deps list cannot change, and why
FIXED = {"preact": "are read by a pre-activation BatchNorm", "output": "reach the output"}


def _check(arch, graph, deps, names):
    """check_deps' length and width checks, then every tie the graph finds (residual sums, followers)."""
    deps = check_deps(arch, deps, len(names), {}, names)
    for g in graph.groups:
        first = g.producers[0]
        for p in g.rows():
            if deps[p.index] != deps[first.index]:
                raise DepsError(f"{arch}: deps[{p.index}] ({p.conv}) is {deps[p.index]} but must equal "
                                f"deps[{first.index}] ({first.conv}) = {deps[first.index]}: their channels are tied "
                                "(a residual sum, a depthwise conv or a squeeze-excite gate)")
        if g.role in FIXED and deps[first.index] != g.width:
            raise DepsError(f"{arch}: deps[{first.index}] ({first.conv}) is {deps[first.index]} but its channels "
                            f"{FIXED[g.role]}, so it must stay {g.width}")
        if deps[first.index] % g.conv_groups:
            raise DepsError(f"{arch}: deps[{first.index}] ({first.conv}) is {deps[first.index]} but a grouped conv "
                            f"with {g.conv_groups} conv groups reads it: it must be a multiple of {g.conv_groups}")
    return [int(d) for d in deps]


def resize(model, graph, deps, arch):
    """Replace every conv, BN and linear of `model` (full width, in place) by one of the widths `deps`."""
    deps = _check(arch, graph, deps, graph.convs)
    widths = graph.widths(deps)
    bns = {p.conv: p.bn for g in graph.groups for p in g.rows() if p.bn}
    for lc in graph.layers:
        m = model.get_submodule(lc.module)
        cin = lc.in_width(widths)
        if lc.kind == "linear":
            cout = m.out_features if lc.out_group is None else widths[lc.out_group]
            new = nn.Linear(cin * lc.kernel, cout, bias=m.bias is not None)
        else:
            cout = widths[lc.out_group]
            groups = cout if lc.groups == 0 else lc.groups
            new = nn.Conv2d(cin, cout, m.kernel_size, m.stride, m.padding, m.dilation, groups, m.bias is not None,
                            m.padding_mode)
            if lc.module in bns:
                bn = model.get_submodule(bns[lc.module])
                _replace(model, bns[lc.module], nn.BatchNorm2d(cout, bn.eps, bn.momentum, bn.affine,
                                                               bn.track_running_stats))
        _replace(model, lc.module, new)
    model.deps = deps
    return model


def build(arch, deps, num_classes):
    """`tv:NAME` with conv widths `deps` (None: torchvision's)."""
    from .channel_graph import arch_graph

    model = full_model(tv_name(arch), num_classes)
    model.num_classes = num_classes
    if deps is None:
        model.deps = widths_of(model)
        return model
    return resize(model, arch_graph(arch, num_classes), list(deps), arch)


def spec(arch):
    """The ArchSpec of `tv:NAME[@SIZE]` (its default deps come from a meta-device build)."""
    name, size = parse(arch)
    cifar = name in CIFAR_VARIANTS
    num_classes = 10 if cifar else 1000
    with torch.device("meta"):
        full = full_model(name, num_classes)
    deps, names = widths_of(full), [n for n, _ in deps_layers(full)]
    return registry.ArchSpec(arch, lambda d, nc: build(arch, d, nc), lambda: list(deps), lambda: list(names),
                             "cifar10" if cifar else "imagenet", num_classes,
                             size or (32 if cifar else INPUT_SIZE.get(name, 224)))


registry.RESOLVERS[PREFIX] = spec
