"""The small model: the zeroed channels removed through the surgery module.

With BN zeroed too (the default), zeroed channels output exactly 0 and the small model computes the
same function as the zeroed one. In `--faithful` mode a zeroed channel still carries its BN constant
(ReLU(beta - gamma*mean/std) in eval mode), which the small model drops, as the original
get_small_model.py did for internal layers: expect an accuracy gap, reported by do_sfp.py.
"""
from base_model import build_model
from utils.surgery import keep, narrow


def small_state(state, graph, pruned):
    """(narrow state dict, deps) keeping every channel not in `pruned` ({group id: channels})."""
    state = {k: v.detach().cpu() for k, v in state.items()}
    decisions = {}
    for gid, idx in pruned.items():
        if idx:
            gone = set(idx)
            decisions[int(gid)] = keep([i for i in range(graph.groups[int(gid)].width) if i not in gone])
    return narrow(state, graph, decisions)


def small_model(model, arch, graph, pruned, num_classes=None):
    """The narrow model of `arch` holding the zeroed model's surviving channels; returns (model, deps)."""
    state, deps = small_state(model.state_dict(), graph, pruned)
    small = build_model(arch, deps, num_classes)
    small.load_state_dict(state)
    return small, deps
