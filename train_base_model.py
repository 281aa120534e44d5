"""Train a base model: `python train_base_model.py -a src56` (or under torchrun), then prune it.

Writes `{arch}_train/finish.hdf5` (with deps), the resume checkpoint, config.json, log.txt and
TensorBoard scalars under the output folder. Re-running the same command resumes.
"""
import argparse
import os

import torch

from base_model import build_model, get_arch
from utils import dist
from utils.cli import add_train_args, run_main, train_config
from utils.data import make_loaders
from utils.engine import Trainer
from utils.store import load_hdf5, save_hdf5

# The original repos' recipes (specs/resrep.md section 5). ImageNet bases are not trained there
# (torchvision weights are imported instead); we use torchvision's reference recipe.
RECIPES = {
    "cifar10": dict(epochs=240, batch_size=64, lr=0.1, milestones=(120, 180), weight_decay=1e-4),
    "imagenet": dict(epochs=90, batch_size=256, lr=0.1, milestones=(30, 60), weight_decay=1e-4),
}


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-a", "--arch", required=True, help="src20/32/56/110, sres18/34/50/101/152 or vc")
    p.add_argument("--deps", type=lambda s: [int(x) for x in s.split(",")], help="conv widths (default: the arch's)")
    p.add_argument("--init", help="hdf5 weights to start from")
    return add_train_args(p).parse_args(argv)


def main(argv=None):
    args = parse(argv)
    spec = get_arch(args.arch)
    args.data = args.data or spec.dataset
    recipe = dict(RECIPES[spec.dataset], output=args.output or f"{args.arch}_train")
    cfg = train_config(args, recipe)
    ctx = dist.setup(args.device, args.local_rank)
    try:
        torch.manual_seed(cfg.seed)
        model = build_model(args.arch, args.deps)
        if args.init:
            load_hdf5(model, args.init)
        train, val = make_loaders(args.data, args.data_root, cfg.batch_size, ctx.device, ctx.rank, ctx.world_size,
                                  cfg.seed, args.workers, image_size=spec.input_size, num_classes=spec.num_classes)
        metrics = Trainer(cfg, model, train, val, ctx).fit()
        if ctx.is_main:
            path = os.path.join(cfg.output, "finish.hdf5")
            save_hdf5(path, model.state_dict(), deps=model.deps, arch=args.arch, metrics=metrics)
            print(f"{args.arch} on {args.data}: top1 {metrics['top1']:.2f} top5 {metrics['top5']:.2f} "
                  f"({metrics['samples']} test images) -> {path}")
    finally:
        dist.cleanup()


if __name__ == "__main__":
    run_main(main)
