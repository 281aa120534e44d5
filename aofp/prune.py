"""From the masked network to the narrow one: the filters whose base mask is 0 are sliced off by
utils.surgery (exact: they give 0 and their scorer never saw them)."""
import torch

from base_model import build_model
from utils.store import load_state
from utils.surgery import keep, narrow


def prune_state(model, graph, keeps):
    """(narrow state dict, deps) from the masked model's state and {group id: kept channel indices}."""
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    return narrow(state, graph, {gid: keep(idx) for gid, idx in keeps.items()})


def pruned_model(model, arch, graph, keeps, num_classes=None):
    """The narrow model (on the masked model's device), and its deps."""
    state, deps = prune_state(model, graph, keeps)
    small = build_model(arch, deps, num_classes)
    load_state(small, state, source="the pruned weights")
    device = next(model.parameters()).device
    return small.to(device), deps


@torch.no_grad()
def zero_pruned(model, graph, keeps):
    """Zero the conv rows and the BN weight and bias of pruned filters, so the plain full-width model
    (no AOFP gates) computes exactly what the masked one does: those channels output 0."""
    for gid, idx in keeps.items():
        group = graph.groups[gid]
        gone = torch.ones(group.width, dtype=torch.bool)
        gone[idx] = False
        for p in group.producers:
            tensors = [model.get_submodule(p.conv).weight, model.get_submodule(p.conv).bias]
            if p.bn is not None:
                bn = model.get_submodule(p.bn)
                tensors += [bn.weight, bn.bias]
            for t in tensors:
                if t is not None:
                    t[gone.to(t.device)] = 0
    return model
