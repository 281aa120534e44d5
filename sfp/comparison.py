"""What SFP tells the comparison (compare_methods.py): the keep rate (in hundredths) that comes nearest
a MACs target."""
from base_model import default_deps
from sfp import do_sfp
from sfp.zeroing import num_pruned
from utils.pruning.channel_graph import arch_graph
from utils.pruning.flops import closest_to_target
from utils.tools.compare import Entry


def rate_for(arch, target, groups="internal", round_to=1):
    """(rate text, deps): the keep rate whose MACs come nearest the target."""
    graph, base = arch_graph(arch), default_deps(arch)
    cands = [(f"{i / 100:g}", graph.deps_at(base, {g.id: g.width - num_pruned(g.width, i / 100, round_to)
                                                    for g in graph.select(groups)}))
             for i in range(1, 101)]
    return closest_to_target(graph, base, cands, target)


def aim(arch, target, groups, round_to=1):
    rate = rate_for(arch, target, groups, round_to)[0]
    return ["--rate", rate], rate


ENTRY = Entry(
    "sfp", "SFP", "sfp/do_sfp.py", do_sfp.main, aim,
    budgets={
        # from the trained base: lr 0.01 and batch 64 as the others; zeroed channels stay zero, BN included
        # (`end`, the default, lets them regrow on their BN bias, which a few epochs cannot undo: 21 % here)
        "demo": ["--epochs", "3", "--lr", "0.01", "--batch-size", "64", "--warmup-epochs", "0", "--bn-zero", "always"],
        "smoke": ["--epochs", "1", "--max-steps", "3"],
        "study": ["--epochs", "5", "--lr", "0.01", "--batch-size", "128", "--warmup-epochs", "0", "--bn-zero", "always"],
    },
    note=lambda conversion, rate: (
        f"SFP: keep rate {rate}, from the trained base; logit diff between the zeroed net and the small net."),
)
