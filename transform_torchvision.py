"""torchvision's ImageNet weights as hdf5: ResNets in our names (the starting point of every sres run), and any
torchvision CNN (`-a tv:NAME`) in torchvision's own names, with its deps.

    python transform_torchvision.py                     # resnet50, IMAGENET1K_V1 -> torchvision_res50.hdf5
    python transform_torchvision.py -a sres18           # -> torchvision_res18.hdf5
    python transform_torchvision.py --from resnet50-0676ba61.pth -o my_res50.hdf5   # offline
    python transform_torchvision.py -a tv:mobilenet_v2 --from mobilenet_v2-b0353104.pth  # torchvision_mobilenet_v2.hdf5

IMAGENET1K_V1 is the checkpoint the original repos used (`pretrained=True`, 76.13 % top-1); `--weights
IMAGENET1K_V2` takes torchvision's newer recipe where one exists. After renaming, the file is loaded
into our model and its logits are compared with torchvision's on a random image.
"""
import os
import re
import urllib.error

import torch

from utils.command import ArgumentParser, run_main

NAME_RULES = [  # torchvision prefix -> ours; applied once, first match wins
    (r"^conv1\.", "conv1.conv."),
    (r"^bn1\.", "conv1.bn."),
    (r"^layer(\d)\.0\.downsample\.0\.", r"stage\1.projection.conv."),
    (r"^layer(\d)\.0\.downsample\.1\.", r"stage\1.projection.bn."),
    (r"^layer(\d)\.(\d+)\.conv(\d)\.", r"stage\1.block\2.conv\3.conv."),
    (r"^layer(\d)\.(\d+)\.bn(\d)\.", r"stage\1.block\2.conv\3.bn."),
    (r"^fc\.", "fc."),
]


def our_name(key):
    for pattern, repl in NAME_RULES:
        new, n = re.subn(pattern, repl, key)
        if n:
            return new
    raise ValueError(f"unexpected key {key!r}: not a torchvision ResNet state dict")


def convert_state(tv_state):
    """torchvision ResNet state dict -> ours (same tensors, our names)."""
    tv_state = {k.removeprefix("module."): v for k, v in tv_state.items()}
    return {our_name(k): v for k, v in tv_state.items()}


def depth_of(arch):
    from base_model import get_arch

    get_arch(arch)
    if not re.fullmatch(r"sres\d+", arch):
        raise ValueError(f"-a {arch}: torchvision weights in our names exist for the ImageNet ResNets only "
                         "(sres18, sres34, sres50, sres101, sres152); any torchvision CNN imports as -a tv:NAME")
    return int(arch[4:])


def weights_enum(model_name, name):
    import torchvision

    enum = torchvision.models.get_model_weights(model_name)
    try:
        return enum[name]
    except KeyError:
        raise ValueError(f"--weights {name}: {model_name} has {', '.join(w.name for w in enum)}") from None


def fetch(url):
    return torch.hub.load_state_dict_from_url(url, progress=True, check_hash=True, map_location="cpu")


def download(model_name, weights_name):
    w = weights_enum(model_name, weights_name)
    try:
        return fetch(w.url)
    except (urllib.error.URLError, OSError, RuntimeError) as e:
        raise FileNotFoundError(
            f"cannot download torchvision's {model_name} {w.name} weights ({type(e).__name__}: {e}). "
            f"This machine may be offline: fetch {w.url} elsewhere and pass it with --from FILE.pth") from None


def read_pth(path):
    if not os.path.exists(path):
        raise FileNotFoundError(f"--from {path}: no such file")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch.load raises many types for a bad file
        raise ValueError(f"--from {path}: not a PyTorch state dict ({type(e).__name__}: {e})") from None
    for key in ("state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict):
        raise ValueError(f"--from {path}: holds a {type(obj).__name__}, not a state dict")
    return obj


def max_logit_diff(depth, tv_state, model):
    """Largest |logit difference| between torchvision's model and ours on one random image."""
    import torchvision

    tv = getattr(torchvision.models, f"resnet{depth}")(num_classes=model.fc.out_features)
    tv.load_state_dict(tv_state)
    x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        return (tv.eval()(x) - model.eval()(x)).abs().max().item()


def import_torchvision_net(args):
    """`-a tv:NAME`: torchvision's state dict as it is (its names are the model's), checked by loading it into
    torchvision's own class and into ours (the same class, built from deps) and comparing their logits."""
    import torchvision

    from base_model import build_model, get_arch
    from utils.pruning.torchvision_models import full_model, tv_name
    from utils.tools.store import load_state, save_hdf5

    name, spec = tv_name(args.arch), get_arch(args.arch)
    tv_state = read_pth(args.source) if args.source else download(name, args.weights)
    tv_state = {k.removeprefix("module."): v for k, v in tv_state.items()}
    linears = [v for k, v in tv_state.items() if k.endswith(".weight") and v.dim() == 2]
    num_classes = linears[-1].shape[0] if linears else spec.num_classes
    source = args.source or f"torchvision {name} {args.weights}"
    model = load_state(build_model(args.arch, num_classes=num_classes), tv_state, source=source)
    theirs = full_model(name, num_classes)
    theirs.load_state_dict(tv_state)
    x = torch.randn(1, 3, spec.input_size, spec.input_size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        diff = (theirs.eval()(x) - model.eval()(x)).abs().max().item()
    out = args.output or f"torchvision_{name}.hdf5"
    save_hdf5(out, model.state_dict(), deps=model.deps, arch=args.arch, source=source,
              torchvision=torchvision.__version__)
    print(f"{args.arch}: {len(tv_state)} tensors, {len(model.deps)} convs; max |logit difference| against "
          f"torchvision's {name} {diff:.3g} -> {out}")


def main(argv=None):
    from base_model import build_model, default_deps
    from utils.tools.store import load_state, save_hdf5

    p = ArgumentParser(description=__doc__)
    p.add_argument("-a", "--arch", default="sres50", help="sres18, sres34, sres50, sres101, sres152, or tv:NAME "
                                                          "(any torchvision CNN with BatchNorm, its own names)")
    p.add_argument("--from", dest="source", help="a torchvision .pth state dict instead of downloading")
    p.add_argument("--weights", default="IMAGENET1K_V1", help="which torchvision weights to download")
    p.add_argument("-o", "--output", help="default: torchvision_res{depth}.hdf5 (tv:NAME: torchvision_NAME.hdf5)")
    args = p.parse_args(argv)
    if args.arch.startswith("tv:"):
        return import_torchvision_net(args)
    depth = depth_of(args.arch)
    tv_state = read_pth(args.source) if args.source else download(f"resnet{depth}", args.weights)
    tv_state = {k.removeprefix("module."): v for k, v in tv_state.items()}
    state = convert_state(tv_state)
    num_classes = state["fc.weight"].shape[0] if "fc.weight" in state else 1000
    model = load_state(build_model(args.arch, num_classes=num_classes), state,
                       source=args.source or f"torchvision resnet{depth}")
    diff = max_logit_diff(depth, tv_state, model)
    out = args.output or f"torchvision_res{depth}.hdf5"
    save_hdf5(out, model.state_dict(), deps=default_deps(args.arch), arch=args.arch,
              source=args.source or f"torchvision resnet{depth} {args.weights}")
    print(f"{args.arch}: {len(state)} tensors renamed; max |logit difference| against torchvision "
          f"{diff:.3g} -> {out}")


if __name__ == "__main__":
    run_main(main)
