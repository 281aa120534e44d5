"""Train a base model: `python train_base_model.py -a src56` (or under torchrun), then prune it.

Writes `{arch}_train/finish.hdf5` (with deps), the resume checkpoint, config.json, log.txt and
TensorBoard scalars under the output folder. Re-running the same command resumes.
"""
from utils.command import run_main
from utils.training import skeleton

# The original repos' recipes (specs/resrep.md section 5). ImageNet bases are not trained there
# (torchvision weights are imported instead); we use torchvision's reference recipe.
RECIPES = {
    "cifar10": dict(epochs=240, batch_size=64, lr=0.1, milestones=(120, 180), weight_decay=1e-4),
    "imagenet": dict(epochs=90, batch_size=256, lr=0.1, milestones=(30, 60), weight_decay=1e-4),
}


def parse(argv=None):
    p = skeleton.parser(__doc__, "hdf5 weights to start from (default: random initialisation)")
    p.add_argument("--deps", type=lambda s: [int(x) for x in s.split(",")], help="conv widths (default: the arch's)")
    return skeleton.parse(p, argv)


def main(argv=None):
    args = parse(argv)
    skeleton.main(args, RECIPES, f"{args.arch}_train")


if __name__ == "__main__":
    run_main(main)
