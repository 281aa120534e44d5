"""SFP's decision: the zeroed channels removed through the surgery module.

With BN zeroed too (the default), zeroed channels output exactly 0 and the small model computes the same
function as the zeroed one, its reference. In `--faithful` mode a zeroed channel still carries its BN
constant (ReLU(beta - gamma*mean/std) in eval mode), which the small model drops, as the original
get_small_model.py did for internal layers: the reference is then the zeroed net with those BN rows
zeroed too (what the conversion keeps), and the 'trained vs converted' difference shows the gap.
"""
import copy

from utils.pruning.plan import Plan
from utils.pruning.surgery import keep
from utils.pruning.zeroing import zero_channels


def kept(graph, pruned):
    """{group id: surgery.keep(every channel not zeroed)} from {group id: zeroed channels}."""
    return {int(gid): keep(sorted(set(range(graph.groups[int(gid)].width)) - set(idx)))
            for gid, idx in pruned.items() if idx}


def decide(model, graph, pruned, bn_zeroed=True, lines=()):
    """The skeleton's Plan from the last zeroing ({group id: zeroed channels})."""
    if bn_zeroed:
        return Plan(kept(graph, pruned), lines=list(lines))
    reference = copy.deepcopy(model)
    zero_channels(reference, graph, {int(g): idx for g, idx in pruned.items()})
    return Plan(kept(graph, pruned), reference, "the zeroed net with their BN zeroed too", lines=list(lines))
