"""AOFP's decision: the filters whose base mask is 0 are sliced off through the surgery module.

First they are zeroed in the trained net itself (conv and BN rows), so its plain full-width form, written
as finish.hdf5, computes what the masked one did. That zeroed net is the conversion's reference; the
slicing is exact since the pruned filters give 0 and their scorer never saw them.
"""
from utils.pruning.surgery import keep
from utils.pruning.zeroing import zero_channels
from utils.training.skeleton import Plan

STOPS = {"target": "MACs below the target", "exhausted": "every layer down to one filter",
         None: "the step limit (the MACs target was not reached)"}


def zero_pruned(model, graph, keeps):
    """Zero the conv rows and the BN weight and bias of every filter not in {group id: kept channels}."""
    zero_channels(model, graph, {gid: sorted(set(range(graph.groups[gid].width)) - set(idx))
                                 for gid, idx in keeps.items()})
    return model


def decide(model, graph, search, step):
    """The skeleton's Plan: keep the base masks' channels (the model is zeroed in place first)."""
    keeps = search.keeps()
    zero_pruned(model, graph, keeps)
    line = (f"AOFP: the search ended at step {step} ({STOPS[search.stopped]}) after {len(search.moves)} "
            "pruning moves")
    return Plan({gid: keep(idx) for gid, idx in keeps.items()}, lines=[line],
                info={"search_stopped": search.stopped, "search_moves": len(search.moves), "search_steps": step})
