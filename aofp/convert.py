"""AOFP's decision: the filters whose base mask is 0 are sliced off through the surgery module.

First they are zeroed in the trained net itself (conv and BN rows, at every producer of the group), so its
plain full-width form, written as finish.hdf5, computes what the masked one did. That zeroed net is the
conversion's reference; the slicing is exact since the pruned filters give 0 and their scorers never saw them.

`--round-to N` then moves each searched group's kept count to a multiple of N (`utils.pruning.flops.align`:
the nearest, halves up, never below N; a group of at most N channels stays whole). Rounding down drops the
kept channels with the smallest filter L1 norm (summed over the group's producers); rounding up restores
the pruned channels with the largest, with the weights they had when the search gated them off. Where
rounding up would break the MACs target, groups are rounded down instead (`round_widths`). The rounded net
is zeroed in place like the searched one, so finish.hdf5 is the rounded net: with its `decisions` it gives
finish_converted.hdf5, the conversion is proven against it, and its metrics are its own (do_aofp.py
evaluates it again). The searched widths and the rounding are recorded in the conversion's attributes.
A separate reference (ResRep's way) would not do: restored channels must be live in the file the
decisions are read with, and they were zeroed in the searched net.
"""
import torch

from utils.pruning.conv_groups import first_per_run, step
from utils.pruning.flops import align, count
from utils.pruning.plan import Plan
from utils.pruning.surgery import keep
from utils.pruning.zeroing import zero_channels

STOPS = {"target": "MACs below the target", "exhausted": "every layer down to one filter",
         None: "the step limit (the MACs target was not reached)"}


def zero_pruned(model, graph, keeps):
    """Zero the conv rows and the BN weight and bias of every filter not in {group id: kept channels}."""
    zero_channels(model, graph, {gid: sorted(set(range(graph.groups[gid].width)) - set(idx))
                                 for gid, idx in keeps.items()})
    return model


@torch.no_grad()
def filter_l1(model, group):
    """Per channel of `group`: the L1 norm of its filters, summed over the group's producers (float64, CPU)."""
    return sum(model.get_submodule(p.conv).weight.detach().double().abs().flatten(1).sum(1).cpu()
               for p in group.producers)


def _options(full, round_to):
    """The widths a group may take: the multiples of `round_to` up to `full`, and `full` itself."""
    return sorted({align(w, full, round_to) for w in range(1, full + 1)})


def round_widths(graph, deps, alive, round_to, target=None):
    """{group id: searched count} -> ({group id: rounded width}, whether the MACs cap holds).

    Every group starts at `align` (nearest multiple). The cap: below `target` (a fraction of `deps`' MACs)
    when the searched widths were, else not above the searched widths' MACs (the search ended short of its
    target, or has none). While the cap fails, one group steps down to its next lower multiple: the one
    rounded up the most (in channels; ties: the one that saves the most MACs), so rounding up is undone
    first and extra cuts are spread over the groups. Rounding down alone always meets the cap, unless a
    group was searched below `round_to` and must grow back to it."""
    full = graph.widths(deps)
    base = count(graph, deps)[0]

    def ratio(widths):
        return count(graph, graph.deps_at(deps, widths))[0] / base

    searched = ratio(alive)
    meets = (lambda r: r < target) if target is not None and searched < target else (lambda r: r <= searched)
    steps = {gid: step(graph.groups[gid], round_to) for gid in alive}
    options = {gid: _options(full[gid], steps[gid]) for gid in alive}
    width = {gid: align(n, full[gid], steps[gid]) for gid, n in alive.items()}
    while not meets(ratio(width)):
        lower = {gid: max(o for o in options[gid] if o < w) for gid, w in width.items() if w > options[gid][0]}
        if not lower:
            return width, False
        gid = max(lower, key=lambda g: (width[g] - alive[g], ratio(width) - ratio({**width, g: lower[g]}), -g))
        width[gid] = lower[gid]
    return width, True


def round_keeps(model, graph, deps, keeps, round_to, target=None):
    """The searched {group id: kept channels} at widths in multiples of `round_to` (see round_widths).
    Returns (rounded keeps, {group id: (searched count, rounded count)} for the groups that moved, whether
    the MACs cap holds)."""
    width, met = round_widths(graph, deps, {gid: len(idx) for gid, idx in keeps.items()}, round_to, target)
    out, moved = {}, {}
    for gid, idx in keeps.items():
        n, w = len(idx), width[gid]
        out[gid] = list(idx)
        if w == n:
            continue
        group = graph.groups[gid]
        norms = filter_l1(model, group)
        kept = torch.zeros(norms.numel(), dtype=torch.bool)
        kept[list(idx)] = True
        # as many from each run of a grouped conv's group (conv_groups.first_per_run; all of them otherwise)
        if w < n:  # drop the weakest kept filters (a stable sort: ties drop the lower index first)
            cand = kept.nonzero().flatten()
            kept[first_per_run(cand[torch.sort(norms[cand], stable=True).indices], n - w, group)] = False
        else:  # restore the strongest pruned filters
            cand = (~kept).nonzero().flatten()
            kept[first_per_run(cand[torch.sort(norms[cand], descending=True, stable=True).indices], w - n,
                               group)] = True
        out[gid] = kept.nonzero().flatten().tolist()
        moved[gid] = (n, w)
    return out, moved, met


def decide(model, graph, search, step, round_to=1):
    """The skeleton's Plan: keep the base masks' channels, rounded to multiples of `round_to` (the model is
    zeroed in place first, its gates and probes removed)."""
    keeps = search.keeps()
    line = (f"AOFP: the search ended at step {step} ({STOPS[search.stopped]}) after {len(search.moves)} "
            "pruning moves")
    info = {"search_stopped": search.stopped, "search_moves": len(search.moves), "search_steps": step}
    lines = [line]
    if round_to > 1:
        target = search.settings["macs_target"]
        before = search.macs_ratio()
        keeps, moved, met = round_keeps(model, graph, search.deps, keeps, round_to, target)
        after = count(graph, graph.deps_at(search.deps, {g: len(k) for g, k in keeps.items()}))[0] / search.base_macs
        names = {gid: graph.groups[gid].producers[0].conv for gid in keeps}
        info.update(round_to=round_to, searched_deps=search.widths_now(), searched_macs_ratio=before,
                    rounded={names[g]: list(m) for g, m in moved.items()})
        lines.append(f"--round-to {round_to}: {len(moved)} of {len(keeps)} searched groups moved to a multiple "
                     f"({', '.join(f'{names[g]} {a} -> {b}' for g, (a, b) in moved.items()) or 'none'}); "
                     f"MACs {before:.2%} -> {after:.2%} of the start net's")
        if not met:
            cap = f"below the target {target:.2%}" if target is not None and before < target else \
                f"at most the searched {before:.2%}"
            lines.append(f"warning: at multiples of {round_to} the MACs cannot be {cap}: groups searched below "
                         f"{round_to} channels grow back to {round_to}")
    search.detach()  # the plain zeroed net is the masked one; restored channels must not stay gated
    zero_pruned(model, graph, keeps)
    return Plan({gid: keep(idx) for gid, idx in keeps.items()}, lines=lines, info=info)
