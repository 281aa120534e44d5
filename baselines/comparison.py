"""What the baselines tell the comparison (compare_methods.py): each at the methods' MACs target, from
the same base (scratch: from random weights) and for the same epochs as a method (scratch: the base's
plus a method's, as Liu et al.)."""
import train_base_model
from base_model import default_deps
from baselines import l1, scratch
from utils.pruning.channel_graph import arch_graph
from utils.pruning.flops import uniform_ratio
from utils.tools.compare import Entry


def aim(arch, target, groups, round_to=1):
    ratio = uniform_ratio(arch_graph(arch), default_deps(arch), groups, target, round_to)[0]
    return ["--ratio", ratio], ratio


# The demo's fine-tuning matches a method's 3 epochs at the methods' lr (src20 on cifar10-mini, batch 64);
# the study's a method's 5 epochs on the full CIFAR-10 at batch 128.
TUNE = {"demo": ["--epochs", "3", "--lr", "0.01", "--schedule", "cosine", "--batch-size", "64"],
        "study": ["--epochs", "5", "--lr", "0.01", "--schedule", "cosine", "--batch-size", "128"],
        "smoke": ["--epochs", "1", "--max-steps", "3"]}
# the base's recipe in each budget (compare_methods.BASE_BUDGETS), a method's epochs longer
SCRATCH_EPOCHS = {"demo": ["--epochs", "9"],
                  "study": ["--epochs", "30", "--batch-size", "128", "--lr", "0.1", "--schedule", "cosine",
                            "--weight-decay", "5e-4", "--nesterov"],
                  "smoke": TUNE["smoke"]}

L1 = Entry(
    "l1", "L1 + fine-tune", "baselines/l1.py", l1.main, aim, budgets=TUNE,
    note=lambda conversion, ratio: (
        f"L1 + fine-tune (Li et al. 2017): every group keeps {ratio} of its filters, those of largest L1 norm, "
        "in one shot; logit diff between the base with the others zeroed and the narrow net; *final* after "
        "fine-tuning."),
    final="finetune/finish.hdf5", done="finetune/finish.hdf5", baseline=True)

SCRATCH = Entry(
    "scratch", "from scratch", "baselines/scratch.py", scratch.main, aim,
    budgets=SCRATCH_EPOCHS,
    note=lambda conversion, ratio: (
        f"from scratch (Liu et al. 2019): the uniform widths x{ratio} trained from random weights for the base's "
        "plus a method's epochs."),
    final="finish.hdf5", done="finish.hdf5", converts=False, from_base=False, baseline=True)

LONGER = Entry(
    "base+", "base + epochs", "train_base_model.py", train_base_model.main, lambda arch, target, groups, round_to=1: ([], None),
    # paper: the base recipe's length again, at a fine-tuning lr, as the methods fine-tune a trained base
    budgets={**TUNE, "paper": ["--lr", "0.01", "--schedule", "cosine"]},
    note=lambda conversion, setting: "base + epochs: the base trained a method's epochs more, not pruned: what the "
                                     "budget alone buys.",
    final="finish.hdf5", done="finish.hdf5", converts=False, groups=False, per_target=False, baseline=True)
