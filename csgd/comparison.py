"""What C-SGD tells the comparison (compare_methods.py): the width ratio (in hundredths) that comes
nearest a MACs target, and one iteration from the base."""
from base_model import default_deps
from csgd import do_csgd
from utils.pruning.channel_graph import arch_graph
from utils.pruning.flops import uniform_ratio
from utils.tools.compare import Entry


def ratio_for(arch, target, groups="internal", round_to=1):
    """(ratio text, deps): the hundredth of the original widths whose MACs come nearest the target (C-SGD's
    schedule floors each width, as uniform_deps does, then aligns it to `round_to`)."""
    return uniform_ratio(arch_graph(arch), default_deps(arch), groups, target, round_to)


def aim(arch, target, groups, round_to=1):
    ratio = ratio_for(arch, target, groups, round_to)[0]
    return ["-i", "0", "--ratios", ratio], ratio


ENTRY = Entry(
    "csgd", "C-SGD", "csgd/do_csgd.py", do_csgd.main, aim,
    budgets={
        # eps 100x the paper's so clusters collapse in 3 epochs rather than 600
        "demo": ["--epochs", "3", "--milestones", "2", "--eps", "0.3", "--vector-factor", "1"],
        "smoke": ["--epochs", "1", "--max-steps", "3"],
        "study": ["--epochs", "5", "--batch-size", "128", "--milestones", "3", "--eps", "0.3", "--vector-factor", "1"],
    },
    note=lambda conversion, ratio: (
        f"C-SGD: widths x{ratio}; logit diff against the trained net with each cluster averaged (the merge); "
        f"against the raw trained net {conversion['raw_logit_diff']:.3g}, the within-cluster deviation left by "
        "training."),
)
