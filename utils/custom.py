"""Your own network: any registered method or baseline on an nn.Module and data of your own, through the same
run skeleton, with the same conversion and proof at the end (docs/TORCHVISION.md, "Your own network").

    from utils.custom import prune
    run = prune("resrep", MyNet(num_classes=10), train=(images, labels), val=(test_images, test_labels),
                flags=["--macs-target", "0.5", "--epochs", "10"], output="my_resrep")
    run.conversion.model      # your class with narrower layers, proven to compute what the trained net computed
    run.conversion.info       # max_logit_diff, MACs and params before and after, old and new deps

`prune` registers the network as the arch `custom:NAME` and the data as `--data custom:NAME` for this process
(`register` does only that, for calling an entry script's `main` yourself). A narrow network is a deep copy of
yours with every conv, BN and linear that a channel group reaches replaced by a narrower one (the channel graph
says which; what it cannot follow is refused by name), so its hdf5 file reloads with `model_from_hdf5` once
`register` has run again in that process. Images are float tensors as the model takes them (N, C, H, W),
labels int64; training crops and flips them as CIFAR (`augment=False` turns that off).
"""
import copy

import torch
from torch import nn

PREFIX = "custom:"


def _pair(split, data):
    """(images, labels) checked for shape."""
    if not (isinstance(data, (tuple, list)) and len(data) == 2 and all(torch.is_tensor(t) for t in data)):
        raise ValueError(f"{split}: give (images, labels), two tensors")
    images, labels = data
    if images.dim() != 4 or labels.dim() != 1 or len(images) != len(labels):
        raise ValueError(f"{split}: images must be (N, C, H, W) and labels (N,), got {tuple(images.shape)} and "
                         f"{tuple(labels.shape)}")
    return images, labels.long()


def _labels_fit(split, data, num_classes):
    if data[1].min() < 0 or data[1].max() >= num_classes:
        raise ValueError(f"{split}: labels must be in 0..{num_classes - 1} (the model has {num_classes} outputs)")
    return data


def register(model, train, val, name="net", recipe="cifar10", augment=True):
    """Register `model` as arch `custom:NAME` and (train, val) as data `custom:NAME`; returns the arch name.

    recipe: whose training recipes the methods use ("cifar10" or "imagenet"). The number of classes is the
    output width of the model on one image; the input size is the images'."""
    from base_model import registry
    from utils.pruning.torchvision_models import resize
    from utils.training.data import CUSTOM, CustomData
    from utils.pruning import channel_graph
    from utils.pruning.channel_graph import arch_graph

    if not isinstance(model, nn.Module):
        raise ValueError(f"model: give an nn.Module, not a {type(model).__name__}")
    if recipe not in ("cifar10", "imagenet"):
        raise ValueError(f"recipe {recipe!r}: use 'cifar10' or 'imagenet' (whose recipes the methods follow)")
    train, val = _pair("train", train), _pair("val", val)
    arch, size = PREFIX + name, int(train[0].shape[-1])
    template = copy.deepcopy(model).cpu().eval()
    with torch.no_grad():
        num_classes = int(template(train[0][:1].float().cpu()).shape[1])
    CUSTOM[arch] = CustomData(_labels_fit("train", train, num_classes), _labels_fit("val", val, num_classes),
                              num_classes, augment)
    convs = [(n, m.out_channels) for n, m in template.named_modules() if isinstance(m, nn.Conv2d)]

    def build(deps, nc):
        if nc != num_classes:
            raise ValueError(f"{arch} has {num_classes} outputs, not {nc}")
        net = copy.deepcopy(template).to(torch.empty(0).device).train()  # the meta device, when asked
        net.num_classes = num_classes
        if deps is None:
            net.deps = [w for _, w in convs]
            return net
        return resize(net, arch_graph(arch, num_classes), list(deps), arch)

    registry.ARCHS[arch] = registry.ArchSpec(arch, build, lambda: [w for _, w in convs], lambda: [n for n, _ in convs],
                                             recipe, num_classes, size)
    channel_graph._arch_graph.cache_clear()  # a name registered again may be another network
    arch_graph(arch, num_classes)  # what the graph cannot follow is refused now, before any file is written
    return arch


def prune(method, model, train, val, flags=(), output="custom_run", name="net", recipe="cifar10", augment=True,
          device="cpu"):
    """Run the registered method or baseline `method` ("resrep", "csgd", "aofp", "sfp", "l1", "scratch", "base")
    on `model` with its own flags (the same as its entry script's, e.g. ["--macs-target", "0.5"]); returns the
    skeleton's Run (run.conversion: the narrow model, its state dict, deps and proof)."""
    import os

    from utils.registry import get_method
    from utils.tools.store import save_hdf5
    from utils.training import skeleton

    arch = register(model, train, val, name, recipe, augment)
    argv = ["-a", arch, "--data", arch, "--device", device, "-o", output, *flags]
    if method not in ("scratch", "base") and "--init" not in flags:  # the methods start from your trained net
        start = os.path.join(output, "start.hdf5")
        os.makedirs(output, exist_ok=True)
        save_hdf5(start, model.state_dict(), deps=[m.out_channels for m in model.modules()
                                                   if isinstance(m, nn.Conv2d)], arch=arch)
        argv += ["--init", start]
    return skeleton.run(get_method(method), argv)
