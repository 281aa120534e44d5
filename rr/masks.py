"""Mask selection: which compactor rows get only the penalty gradient.

All rows of all pruned groups are ranked together by norm (smallest first, no per-layer weighting,
as the paper). Walking that list from a fresh start (the unpruned widths), each row narrows its group
by one until the MACs reach `macs_target` of the base; a group never goes below `num_at_least`.
With `round_to` N > 1 (`--round-to`) a group moves N channels at a time, once N of its rows have come up
in the list (its first move only as far as the nearest multiple of N), and never below N: every unmasked
width is then a multiple of N. A group read by a grouped conv with G conv groups moves lcm(N, G) rows at a time,
as many from each of its G runs (the rows of a run beyond its share wait for the next update).
Until the target has been reached once by the current masks, an update may mask at most
`begin_granularity` more rows than the masks in place. Unlike the original code, the cap counts
only rows actually masked (not the skipped ones), and every group's mask is rebuilt (no stale zeros).

MACs are kept up to date incrementally: narrowing one group changes only the layers that read or
write it, so each step costs a few multiplications instead of a full recount.

With a latency target (`--latency-target`) the walk is the same, but each masked row is charged its
predicted latency instead of its MACs (LatencyCounter: the layers' costs read from a per-layer latency
table measured on this machine, utils/tools/latency_table.py), and it stops at the target fraction of the
base's predicted latency.
"""
import math

import torch

from utils.pruning.conv_groups import step
from utils.pruning.flops import layer_macs


class MacsCounter:
    """MACs of a model as group widths shrink one channel at a time (`total`, also `macs`)."""

    def __init__(self, graph, widths):
        self.widths = dict(widths)
        self.touching = {g.id: [] for g in graph.groups}
        for lc in graph.layers:
            for gid in {lc.in_group, lc.out_group} - {None}:
                self.touching[gid].append(lc)
        self.total = sum(self.layer_cost(lc) for lc in graph.layers)

    @property
    def macs(self):
        return self.total

    def layer_cost(self, lc):
        return layer_macs(lc, self.widths)

    def saving(self, gid):
        """Cost saved by removing one channel of group `gid` at the current widths."""
        before = sum(self.layer_cost(lc) for lc in self.touching[gid])
        self.widths[gid] -= 1
        after = sum(self.layer_cost(lc) for lc in self.touching[gid])
        self.widths[gid] += 1
        return before - after

    def remove_one(self, gid):
        self.total -= self.saving(gid)
        self.widths[gid] -= 1


class LatencyCounter(MacsCounter):
    """Predicted latency (ms) of a model as group widths shrink: each conv and linear charged the cost that a
    LatencyTable (utils/tools/latency_table.py) interpolates for its widths."""

    def __init__(self, graph, widths, table):
        self.table = table
        super().__init__(graph, widths)

    def layer_cost(self, lc):
        return self.table.layer_ms(lc, self.widths)


def select_masks(graph, base_deps, norms, masked_now, macs_target, begin_granularity=4, num_at_least=1,
                 round_to=1, latency_table=None, latency_target=None):
    """New masks: {group id: sorted channel indices to mask}.

    graph: the ChannelGraph (group widths at `base_deps`); norms: {group id: 1-D tensor of row norms}
    for the pruned groups; masked_now: {group id: number of rows masked now}. The cap of
    `begin_granularity` more rows always lets one move of `round_to` rows through. With `latency_target`
    (and its `latency_table`), the walk stops at that fraction of the base's predicted latency instead of
    `macs_target` of its MACs (then unused).
    """
    if num_at_least < 1:
        raise ValueError(f"num_at_least must be at least 1 (a group cannot lose every channel), got {num_at_least}")
    if round_to < 1:
        raise ValueError(f"round_to must be at least 1 (1: any width), got {round_to}")
    if latency_target is None:
        counter_at, fraction = (lambda widths: MacsCounter(graph, widths)), macs_target
    elif latency_table is None:
        raise ValueError("a latency target needs the latency table that predicts it")
    else:
        counter_at, fraction = (lambda widths: LatencyCounter(graph, widths, latency_table)), latency_target
    base_widths = graph.widths(base_deps)
    counter = counter_at(base_widths)
    target = fraction * counter.total
    current = {gid: base_widths[gid] - masked_now.get(gid, 0) for gid in norms}
    cap = sum(masked_now.values()) + begin_granularity if counter_at({**base_widths, **current}).total > target \
        else math.inf

    gids = list(norms)
    values = torch.cat([norms[g].detach().double().cpu().flatten() for g in gids])
    owner = torch.cat([torch.full((len(norms[g]),), i, dtype=torch.long) for i, g in enumerate(gids)])
    channel = torch.cat([torch.arange(len(norms[g])) for g in gids])
    order = torch.argsort(values, stable=True).tolist()
    owner, channel = owner.tolist(), channel.tolist()

    # a group read by a grouped conv moves as many rows in each of its G runs (utils/pruning/conv_groups.py)
    unit = {g: step(graph.groups[g], round_to) for g in gids}
    runs = {g: graph.groups[g].conv_groups for g in gids}
    chosen, waiting = {g: [] for g in gids}, {g: [[] for _ in range(runs[g])] for g in gids}
    n = 0
    for k in order:
        if counter.total <= target or n >= cap:
            break
        gid = gids[owner[k]]
        move = counter.widths[gid] % unit[gid] or unit[gid]
        if counter.widths[gid] - move < max(num_at_least, unit[gid]):
            continue
        run = waiting[gid][channel[k] * runs[gid] // len(norms[gid])]
        if len(run) >= move // runs[gid]:
            continue
        run.append(channel[k])
        if sum(len(r) for r in waiting[gid]) < move:
            continue
        if n and n + move > cap:
            break
        for _ in range(move):
            counter.remove_one(gid)
        chosen[gid] += [c for r in waiting[gid] for c in r]
        waiting[gid] = [[] for _ in range(runs[gid])]
        n += move
    return {g: sorted(c) for g, c in chosen.items()}
