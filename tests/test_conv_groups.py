"""Groups read by a grouped conv (utils/pruning/conv_groups.py): every method's choice keeps the same count of
channels in each conv group's run, and merges only inside a run; with one conv group nothing changes."""
import random
from types import SimpleNamespace

import pytest
import torch

from aofp.convert import round_keeps
from aofp.search import LayerSearch
from base_model import build_model, default_deps
from csgd.clustering import cluster_groups
from rr.masks import select_masks
from sfp.zeroing import choose
from utils.pruning.channel_graph import arch_graph
from utils.pruning.conv_groups import first_per_run, misfit, step, take_per_run
from utils.pruning.flops import uniform_deps

ARCH = "tv:regnet_y_400mf@32"  # its bottleneck groups: 48 to 440 channels in conv groups of 8


def fake(width, conv_groups):
    return SimpleNamespace(id=0, width=width, conv_groups=conv_groups, producers=[SimpleNamespace(conv="c")])


def per_run(channels, group):
    size = group.width // group.conv_groups
    return [sum(1 for i in channels if i // size == j) for j in range(group.conv_groups)]


def grouped(graph):
    return [g for g in graph.select("internal") if g.conv_groups > 1]


def test_first_per_run_takes_each_runs_share_in_order():
    g = fake(12, 3)  # runs 0-3, 4-7, 8-11
    assert first_per_run([0, 1, 2, 5, 9, 3, 10, 4, 6], 6, g) == [0, 1, 5, 9, 10, 4]
    assert take_per_run([5, 2, 7], 2, 8, 1) == [5, 2]  # one conv group: the first `count`, as before
    with pytest.raises(ValueError, match="5 channels cannot be taken evenly from its 3 conv groups"):
        first_per_run(range(12), 5, g)
    assert step(g, 1) == 3 and step(g, 8) == 24 and step(fake(12, 1), 8) == 8
    assert misfit([[0], [4], [8]], g) is None
    assert "spans conv groups [0, 1]" in misfit([[3, 4], [8], [9]], g)
    assert "keeps [2, 1, 0] channels" in misfit([[0], [1], [4]], g)


def test_the_uniform_widths_are_multiples_of_the_conv_groups():
    graph = arch_graph(ARCH)
    deps = uniform_deps(graph, default_deps(ARCH), "internal", 0.3)
    build_model(ARCH, deps)  # a width that is no multiple of its conv groups is refused here
    for g in grouped(graph):
        assert deps[g.producers[0].index] % g.conv_groups == 0 < deps[g.producers[0].index] < g.width


@pytest.mark.parametrize("round_to", [1, 2])
def test_resrep_masks_move_as_many_rows_in_every_run(round_to):
    graph = arch_graph(ARCH)
    gen = torch.Generator().manual_seed(0)
    norms = {g.id: torch.rand(g.width, generator=gen) for g in graph.select("internal")}
    masks = select_masks(graph, default_deps(ARCH), norms, {}, 0.5, begin_granularity=10**9, round_to=round_to)
    moved = [g for g in grouped(graph) if masks[g.id]]
    assert moved
    for g in moved:
        counts = per_run(masks[g.id], g)
        assert len(set(counts)) == 1 and (g.width - len(masks[g.id])) % step(g, round_to) == 0, (g.id, counts)


def test_aofp_searches_and_prunes_each_run_alike():
    layer = LayerSearch("c", 0, 16, 0, conv_groups=4)
    layer.restart(0)
    drawn = layer.draw(torch.Generator().manual_seed(0))
    assert per_run(drawn.nonzero().flatten().tolist(), fake(16, 4)) == [2, 2, 2, 2]
    damage = torch.arange(16, dtype=torch.float64).flip(0)  # the last run harms least: a global half would be 8..15
    layer.accumulate(damage, torch.ones(16, dtype=torch.bool))
    verdict, pruned, _ = layer.decide(1, thresh=100.0)
    assert verdict == "prune" and sorted(pruned) == [2, 3, 6, 7, 10, 11, 14, 15]
    assert per_run(layer.keep.nonzero().flatten().tolist(), fake(16, 4)) == [2, 2, 2, 2]
    for seed in range(8):  # from the survivors only, one of each run's two
        drawn = layer.draw(torch.Generator().manual_seed(seed))
        assert not (drawn & ~layer.search).any() and per_run(drawn.nonzero().flatten().tolist(), fake(16, 4)) == [1] * 4
    for step_ in (2, 3):  # one more prune leaves one per run: done
        layer.accumulate(damage, layer.keep.clone())
        layer.decide(step_, thresh=100.0)
    assert layer.alive == 4 and layer.done


def test_aofp_rounding_drops_and_restores_as_many_per_run():
    graph = arch_graph(ARCH)
    model = build_model(ARCH)
    g = grouped(graph)[0]
    rng = random.Random(0)
    keeps = {g.id: sorted(first_per_run(rng.sample(range(g.width), g.width), g.width // 2, g))}
    rounded, moved, _ = round_keeps(model, graph, default_deps(ARCH), keeps, round_to=5)  # to a multiple of 30
    assert moved[g.id] == (24, 30) and per_run(rounded[g.id], g) == [5] * 6


def test_csgd_clusters_inside_runs_and_as_many_in_each():
    graph = arch_graph(ARCH)
    state = build_model(ARCH).state_dict()
    g = grouped(graph)[0]
    for method in ("kmeans", "even"):
        clusters = cluster_groups(state, graph, {g.id: g.width // 2}, method)[g.id]
        assert misfit(clusters, g) is None and len(clusters) == g.width // 2
    with pytest.raises(ValueError, match=f"target width 7 is not a multiple of its {g.conv_groups} conv groups"):
        cluster_groups(state, graph, {g.id: 7})


def test_sfp_zeroes_as_many_per_run():
    graph = arch_graph(ARCH)
    torch.manual_seed(0)
    chosen = choose(build_model(ARCH), grouped(graph), 0.6)
    for g in grouped(graph):
        assert chosen[g.id] and len(set(per_run(chosen[g.id], g))) == 1
