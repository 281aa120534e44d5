"""Plain training: `python train_base_model.py -a src56` (or under torchrun), then prune it.

Trains a network from random initialisation (or from `--init`) with the original repos' recipe and no
pruning: the base every method starts from. Writes `{arch}_train/finish.hdf5` (with deps), the resume
checkpoint, config.json, log.txt and TensorBoard scalars under the output folder. Re-running the same
command resumes. In the comparison it is also the baseline `base+`: the base trained a method's epochs more.
"""
import os

from utils.training.method import Method, optional_start
from utils.command import arch_folder

# The original repos' recipes (specs/resrep.md section 5). ImageNet bases are not trained there
# (torchvision weights are imported instead); we use torchvision's reference recipe.
RECIPES = {
    "cifar10": dict(epochs=240, batch_size=64, lr=0.1, milestones=(120, 180), weight_decay=1e-4),
    "imagenet": dict(epochs=90, batch_size=256, lr=0.1, milestones=(30, 60), weight_decay=1e-4),
}
# The comparison's base per budget. `demo` is sized for src20 on cifar10-mini (78 steps of 64 images an epoch) to
# finish in 12 minutes on a 2-core CPU without native bf16 (fp32): a 6-epoch base, then 3 epochs per method and
# baseline (9 for scratch); `study` is the full CIFAR-10 at batch 128.
BASE_BUDGETS = {"paper": [], "demo": ["--epochs", "6"], "smoke": ["--epochs", "1", "--max-steps", "3"],
                "study": ["--epochs", "25", "--batch-size", "128", "--lr", "0.1", "--schedule", "cosine",
                          "--weight-decay", "5e-4", "--nesterov"]}
# A method's epochs at the methods' lr, for the rows that train a trained net further (base+, L1's fine-tune):
# the demo's 3 epochs on cifar10-mini at batch 64, the study's 5 on the full CIFAR-10 at batch 128.
TUNE = {"demo": ["--epochs", "3", "--lr", "0.01", "--schedule", "cosine", "--batch-size", "64"],
        "study": ["--epochs", "5", "--lr", "0.01", "--schedule", "cosine", "--batch-size", "128"],
        "smoke": ["--epochs", "1", "--max-steps", "3"]}


# Trained bases that ship in the repository, with their provenance in the file (display_hdf5.py shows it) and their
# log beside it: {(arch, data): file}. src20 on CIFAR-10: the study budget's base recipe, seed 0.
WEIGHTS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "base_model", "weights")
SHIPPED = {("src20", "cifar10"): os.path.join(WEIGHTS, "src20_cifar10.hdf5")}
# The comparison budgets that start from the shipped base of their arch and data (unless --init says otherwise): the
# study, whose base recipe trained it, and the demo, which prunes it and trains on cifar10-mini (5,000 of CIFAR-10's
# training images and its whole test set, so the base's data family).
SHIPPED_BUDGETS = ("demo", "study")
DATA_FAMILY = {"cifar10-mini": "cifar10"}


def shipped_base(arch, data, budget):
    """The shipped base file for this arch, data and budget, or None."""
    path = SHIPPED.get((arch, DATA_FAMILY.get(data, data)))
    return path if budget in SHIPPED_BUDGETS and path and os.path.isfile(path) else None


def flags(p):
    p.add_argument("--deps", type=lambda s: [int(x) for x in s.split(",")], help="conv widths (default: the arch's)")


BASE = Method(  # no label: its run prints "src20 on cifar10: top1 ..."
    "base", "", "train_base_model.py", __doc__, RECIPES,
    output=lambda args: f"{arch_folder(args.arch)}_train",
    flags=flags, start=optional_start, init_help="hdf5 weights to start from (default: random initialisation)",
    budgets=BASE_BUDGETS, per_target=False, groups=False, converts=False, final="finish.hdf5", done="finish.hdf5",
)

BASE_PLUS = Method(
    "base+", "base + epochs", "train_base_model.py", __doc__, RECIPES,
    output=BASE.output, flags=flags, start=optional_start, init_help=BASE.init_help,
    baseline=True, per_target=False, groups=False, converts=False, final="finish.hdf5", done="finish.hdf5",
    # paper: the base recipe's length again, at a fine-tuning lr, as the methods fine-tune a trained base
    budgets={**TUNE, "paper": ["--lr", "0.01", "--schedule", "cosine"]},
    note=lambda conversion, setting: "base + epochs: the base trained a method's epochs more, not pruned: what the "
                                     "budget alone buys.",
)
