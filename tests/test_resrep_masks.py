"""ResRep's mask selection: the walk over all rows by norm, its cap, its MACs bookkeeping, and the steps at
which it runs, against the original's walk written from the spec."""
import math
import random

import pytest
import torch
from resrep_helpers import Probe, masked_count, one_thread, perturb_compactors, resrep, tiny_trainer  # noqa: F401

from base_model import build_model
from rr.compactor import resrep_model
from rr.masks import MacsCounter, select_masks
from rr.resrep import ResRepConfig, ResRepHook
from utils.pruning.channel_graph import arch_graph
from utils.pruning.flops import count

# --- mask selection -------------------------------------------------------------------------------

class Walk:
    """What original_walk saw: rows masked in walk order (group id, channel), entries skipped, whether the cap
    ended the walk, and whether its last visited entry was a skipped one."""

    def __init__(self):
        self.rows, self.skipped, self.capped, self.last_skipped = [], 0, False, False

    def masks(self, gids, n=None):
        out = {g: [] for g in gids}
        for gid, j in self.rows[:n]:
            out[gid].append(j)
        return {g: sorted(c) for g, c in out.items()}


def original_walk(graph, base_deps, norms, masked_now, target, granularity, at_least):
    """The original's selection as specs/resrep.md 2.3 states it, written from the spec, not from rr/masks.py:
    the cap is set from the masks in place; the walk starts from the unpruned widths and goes through all rows
    ascending by norm; before each entry the MACs are recounted from a whole deps list; an entry whose group is
    at `at_least` is skipped; the cap counts every visited entry, skipped ones included."""
    base = count(graph, base_deps)[0]
    now = list(base_deps)
    for gid, n in masked_now.items():
        for p in graph.groups[gid].producers:
            now[p.index] -= n
    cap = sum(masked_now.values()) + granularity if count(graph, now)[0] > target * base else math.inf
    entries = sorted((v, gid, j) for gid, t in norms.items() for j, v in enumerate(t.double().tolist()))
    attempt, walk, visited = list(base_deps), Walk(), 0
    for _, gid, j in entries:
        if count(graph, attempt)[0] <= target * base:
            break
        producers = graph.groups[gid].producers
        walk.last_skipped = attempt[producers[0].index] <= at_least
        if walk.last_skipped:
            walk.skipped += 1
        else:
            for p in producers:
                attempt[p.index] -= 1
            walk.rows.append((gid, j))
        visited += 1
        if visited >= cap:
            walk.capped = True
            break
    return walk


def norms_with_a_tiny_group(groups, tiny=True, seed=1):
    """Random distinct norms; with `tiny`, the first group's rows are the smallest of all, so the walk takes
    them first, the group reaches num_at_least, and its last rows are skipped entries."""
    g = torch.Generator().manual_seed(seed)
    norms = {pg.id: torch.rand(pg.group.width, generator=g) for pg in groups}
    if tiny:
        norms[groups[0].id] *= 1e-3
    return norms


def test_incremental_macs_equal_a_full_recount():
    graph, deps = arch_graph("sres50"), build_model("sres50").deps
    counter = MacsCounter(graph, graph.widths(deps))
    rng = random.Random(0)
    for _ in range(200):
        counter.remove_one(rng.choice([g.id for g in graph.groups if counter.widths[g.id] > 1]))
    assert counter.macs == count(graph, graph.deps_at(deps, counter.widths))[0]


# (target, begin_granularity, rows masked now in every group, tiny group, rows the walk masks, skipped, capped)
# src20's internal groups have 16,16,16,32,32,32,64,64,64 rows; num_at_least is 3.
AGREEING_CASES = [
    (0.5, 4, 0, True, 4, 0, True),  # the cap binds on the tiny group's rows, before any skip
    (0.3, 7, 2, False, 25, 0, True),  # the cap binds (18 + 7), no group reaches the floor
    (0.5, 10**6, 0, True, None, 3, False),  # no cap: the tiny group stops at 3, its last 3 rows are skipped
    (0.95, 4, 2, True, None, 0, False),  # the masks in place already meet the target: no cap
]


@pytest.mark.parametrize("target, granularity, masked_now, tiny, n, skipped, capped", AGREEING_CASES)
def test_selection_equals_the_originals_walk_when_no_skipped_entry_meets_the_cap(target, granularity, masked_now,
                                                                                  tiny, n, skipped, capped):
    _, graph, groups = resrep("src20")
    norms = norms_with_a_tiny_group(groups, tiny)
    masked_now = {pg.id: masked_now for pg in groups}
    deps = build_model("src20").deps
    got = select_masks(graph, deps, norms, masked_now, target, granularity, num_at_least=3)
    walk = original_walk(graph, deps, norms, masked_now, target, granularity, 3)
    assert (walk.skipped, walk.capped) == (skipped, capped)  # the case is the one described
    assert got == walk.masks(norms)
    if n is not None:
        assert len(walk.rows) == n
    if not capped:  # stopped by the target: the shortest prefix that meets it
        base = count(graph, deps)[0]
        widths = {pg.id: pg.group.width - len(got[pg.id]) for pg in groups}
        assert count(graph, graph.deps_at(deps, widths))[0] <= target * base
        last_gid, _ = walk.rows[-1]
        widths[last_gid] += 1
        assert count(graph, graph.deps_at(deps, widths))[0] > target * base
    if tiny and target <= 0.5 and not capped:
        assert len(got[groups[0].id]) == 16 - 3  # the floor, not below


def test_no_cap_once_the_masks_in_place_meet_the_target():
    """Masks in place on the costly stage-1 channels meet the target; the smallest norms are on the cheap
    stage-3 channels, so the fresh walk needs far more rows than those masked now + begin_granularity, and
    takes them all at once (the cap only applies while the target is not met)."""
    _, graph, groups = resrep("src20")
    deps = build_model("src20").deps
    norms = norms_with_a_tiny_group(groups, tiny=False)
    for pg in groups[6:]:  # stage 3: 64 channels at 8x8
        norms[pg.id] *= 1e-3
    masked_now = {pg.id: 13 if pg.group.width == 16 else 0 for pg in groups}
    now = graph.deps_at(deps, {pg.id: pg.group.width - masked_now[pg.id] for pg in groups})
    target = count(graph, now)[0] / count(graph, deps)[0] + 1e-3
    got = select_masks(graph, deps, norms, masked_now, target, 4, num_at_least=1)
    walk = original_walk(graph, deps, norms, masked_now, target, 4, 1)
    assert not walk.capped and len(walk.rows) > 39 + 4
    assert got == walk.masks(norms)
    assert {g for g, c in got.items() if c} == {pg.id for pg in groups[6:]}


def test_our_cap_counts_only_masked_rows_the_originals_counts_skipped_entries_too():
    """The deliberate deviation (rr/masks.py docstring): where skipped entries come before the cap, we mask
    exactly that many more rows than the original, and the original's rows are a subset of ours. Both are
    prefixes of the uncapped walk."""
    _, graph, groups = resrep("src20")
    norms = norms_with_a_tiny_group(groups)
    masked_now = {pg.id: 2 for pg in groups}
    deps = build_model("src20").deps
    cap = 9 * 2 + 7
    got = select_masks(graph, deps, norms, masked_now, 0.3, 7, num_at_least=3)
    orig = original_walk(graph, deps, norms, masked_now, 0.3, 7, 3)
    free = original_walk(graph, deps, norms, masked_now, 0.3, math.inf, 3)
    # the tiny group: 13 rows down to 3, then its last 3 rows skipped, all within the cap; the walk ends on a
    # masked row, so reading "the cap is checked after every entry" or "after masked ones" gives the same
    assert (orig.skipped, orig.capped, orig.last_skipped) == (3, True, False)
    assert not free.capped and len(free.rows) > cap
    n = sum(map(len, got.values()))
    assert len(orig.rows) == cap - orig.skipped == 22
    assert n == cap == len(orig.rows) + orig.skipped
    assert all(set(orig.masks(norms)[g]) <= set(got[g]) for g in got)
    assert got == free.masks(norms, cap) and orig.masks(norms) == free.masks(norms, cap - orig.skipped)


def test_repeated_updates_grow_by_the_granularity_until_the_target():
    model, graph, groups = resrep("src56")
    cfg = ResRepConfig(macs_target=0.471, before_mask_iters=0, mask_interval=1, begin_granularity=4, num_at_least=1)
    hook = ResRepHook(graph, model.deps, groups, cfg)
    perturb_compactors(groups, 1.0)
    norms = {pg.id: pg.norms() for pg in groups}
    final = original_walk(graph, model.deps, norms, {}, cfg.macs_target, math.inf, 1)  # the shortest prefix
    total = len(final.rows)
    k = -(-total // 4)  # updates until the target: 4 more rows each, the last one possibly fewer
    assert k > 10
    base = count(graph, model.deps)[0]
    ratios, counts, previous = [], [], set()
    for _ in range(k + 1):  # one more after the target: the masks stay
        chosen = hook.update_masks()
        rows = {(g, j) for g, c in chosen.items() for j in c}
        assert previous <= rows  # norms do not change here: each update extends the last
        previous = rows
        counts.append(len(rows))
        ratios.append(count(graph, hook.masked_deps())[0] / base)
    assert counts == [4 * i for i in range(1, k)] + [total, total]
    assert ratios[-3] > cfg.macs_target >= ratios[-2] == ratios[-1]
    assert chosen == final.masks(norms) and hook.updates == k + 1
    deps = hook.masked_deps()
    for pg in groups:  # converted width = origin - masked, never below num_at_least
        assert deps[pg.group.producers[0].index] == pg.group.width - len(pg.masked()) >= 1


def test_mask_update_on_sres50_meets_the_target_with_the_fewest_smallest_rows():
    # How fast it is is measured by benchmarks/; here it must finish and meet the target, and no sooner.
    model, graph, groups = resrep_model("sres50")
    perturb_compactors(groups, 1.0)
    hook = ResRepHook(graph, model.deps, groups, ResRepConfig(macs_target=0.455, begin_granularity=10**9))
    hook.update_masks()
    base = count(graph, model.deps)[0]
    assert count(graph, hook.masked_deps())[0] <= 0.455 * base
    widths = {pg.id: pg.group.width - len(pg.masked()) for pg in groups}
    assert min(widths.values()) > 1  # no group at num_at_least: a plain global ranking
    masked = torch.cat([pg.norms()[pg.masked()] for pg in groups])
    kept = torch.cat([pg.norms()[[j for j in range(pg.group.width) if j not in set(pg.masked())]] for pg in groups])
    assert masked.max() < kept.min()  # the smallest rows of all groups together
    last = max(groups, key=lambda pg: float(pg.norms()[pg.masked()].max()) if pg.masked() else -1.0)
    widths[last.id] += 1  # unmask the largest masked row: the target is no longer met
    assert count(graph, graph.deps_at(model.deps, widths))[0] > 0.455 * base


@pytest.mark.parametrize("before, interval, steps, expected", [(3, 2, 9, [5, 7, 9]), (4, 1, 7, [5, 6, 7]),
                                                              (0, 3, 7, [3, 6])])
def test_mask_updates_happen_at_the_originals_steps(tmp_path, before, interval, steps, expected):
    """The original's trigger: it > before_mask_iters and (it - before_mask_iters) % mask_interval == 0, with
    `it` the number of steps taken. A probe after the ResRepHook sees every step's updates and masks."""
    model, graph, groups = resrep("src20")
    hook = ResRepHook(graph, model.deps, groups, ResRepConfig(macs_target=0.3, before_mask_iters=before,
                                                              mask_interval=interval, begin_granularity=3))
    seen = []
    probe = Probe(after_step=lambda t: seen.append((t.step, hook.updates, masked_count(groups))))
    tiny_trainer(model, groups, [hook, probe], tmp_path, steps=steps).train_one_epoch(0)
    assert [s for s, _, _ in seen] == list(range(1, steps + 1))
    updated = [s for (s, u, _), prev in zip(seen, [0] + [u for _, u, _ in seen]) if u != prev]
    assert updated == expected
    # the masks change at exactly those steps, 3 more rows each (the target is far)
    assert [n for _, _, n in seen] == [3 * sum(s >= e for e in expected) for s in range(1, steps + 1)]
