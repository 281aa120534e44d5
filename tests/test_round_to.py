"""--round-to N: every method's and baseline's kept widths are multiples of N (never below N, a group of at
most N channels stays whole), the MACs target still holds, and N = 1 changes nothing."""
from fractions import Fraction

import pytest
import torch
from helpers import SYNTHETIC, script

from base_model import default_deps
from baselines.from_scratch import SCRATCH
from baselines.l1_pruning import L1
from csgd.schedule import Schedule, target_deps
from rr.masks import select_masks
from rr.method import RESREP
from sfp.method import SFP
from sfp.zeroing import num_pruned
from utils.pruning.channel_graph import arch_graph
from utils.pruning.flops import align, count, uniform_deps, uniform_ratio
from utils.tools.store import read_hdf5

exp_resrep = script(RESREP)
do_sfp = script(SFP)
l1, scratch = script(L1), script(SCRATCH)

SMOKE = ["-a", "src20", *SYNTHETIC, "--epochs", "1", "--batch-size", "32",
         "--deterministic"]


def aligned(width, full, n):
    return width == full or (width % n == 0 and width >= n)


def test_align_rounds_to_the_nearest_multiple_within_the_group():
    assert [align(w, 16, 8) for w in (1, 4, 8, 11, 12, 15, 16)] == [8, 8, 8, 8, 16, 16, 16]
    assert align(5, 64, 1) == 5 and align(70, 64, 1) == 64
    assert align(3, 4, 8) == 4  # a group of at most N channels stays whole
    assert align(61, 64, 8) == 64 and align(59, 64, 8) == 56


def random_norms(graph, groups, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return {g.id: torch.rand(g.width, generator=gen) for g in graph.select(groups)}


@pytest.mark.parametrize("arch,groups", [("src56", "internal"), ("src56", "all"), ("sres50", "internal")])
@pytest.mark.parametrize("n", [8, 16])
def test_resrep_mask_walk_moves_groups_n_channels_at_a_time(arch, groups, n):
    graph, base = arch_graph(arch), default_deps(arch)
    norms = random_norms(graph, groups)
    masks = select_masks(graph, base, norms, {}, 0.5, begin_granularity=10**9, round_to=n)
    widths = {gid: graph.groups[gid].width - len(m) for gid, m in masks.items()}
    assert all(aligned(w, graph.groups[gid].width, n) for gid, w in widths.items()), widths
    if count(graph, graph.deps_at(base, widths))[0] > 0.5 * count(graph, base)[0]:
        # out of channels to move: every group at N (or whole), e.g. src56's 16-wide stage with N = 16
        assert all(w == min(graph.groups[gid].width, n) for gid, w in widths.items()), widths
    plain = select_masks(graph, base, norms, {}, 0.5, begin_granularity=10**9)
    assert plain != masks  # with N = 1 the walk stops at irregular widths


def test_resrep_mask_walk_with_n_1_is_the_paper_walk():
    graph, base = arch_graph("src56"), default_deps("src56")
    norms = random_norms(graph, "internal", seed=1)
    masks = select_masks(graph, base, norms, {}, 0.6, begin_granularity=10**9, round_to=1)
    # the paper's walk: the smallest rows first, one row at a time, until the MACs are at the target
    everything = sorted((v.item(), gid, c) for gid, t in norms.items() for c, v in enumerate(t))
    n = sum(len(m) for m in masks.values())
    assert {(gid, c) for _, gid, c in everything[:n]} == {(gid, c) for gid, m in masks.items() for c in m}


def test_resrep_cap_lets_one_move_through():
    graph, base = arch_graph("src20"), default_deps("src20")
    masks = select_masks(graph, base, random_norms(graph, "internal"), {}, 0.5, begin_granularity=4, round_to=8)
    assert sum(len(m) for m in masks.values()) == 8


def test_csgd_cluster_counts_and_uniform_widths_are_aligned():
    graph, base = arch_graph("src56"), default_deps("src56")
    deps = target_deps("src56", graph, Schedule((Fraction(5, 8),), "all", "floor"), 0, round_to=8)
    assert all(d % 8 == 0 for d in deps) and deps != base
    assert target_deps("src56", graph, Schedule((Fraction(5, 8),), "all", "floor"), 0) == [
        d * 5 // 8 for d in base]
    ratio, deps = uniform_ratio(graph, base, "internal", 0.5, round_to=8)
    assert all(d % 8 == 0 for d in deps)
    assert abs(count(graph, deps)[0] / count(graph, base)[0] - 0.5) < 0.1
    assert uniform_deps(graph, base, "internal", Fraction(ratio), 8) == deps


def test_sfp_kept_counts_are_aligned():
    assert [64 - num_pruned(64, r, 8) for r in (0.3, 0.5, 0.6, 0.7)] == [24, 32, 40, 48]  # 20 -> 24: halves up
    assert [64 - num_pruned(64, r) for r in (0.3, 0.5, 0.6, 0.7)] == [20, 32, 39, 45]  # N = 1: int(N*(1-rate))


RUNS = {
    "resrep": (exp_resrep.main, ["--max-steps", "4", "--before-mask-iters", "0", "--mask-interval", "1",
                                 "--begin-granularity", "1000", "--flops-target", "0.6"], "internal"),
    "sfp": (do_sfp.main, ["--max-steps", "3", "--rate", "0.6"], "all"),
    "l1": (l1.main, ["--max-steps", "2", "--macs-target", "0.5"], "internal"),
}


@pytest.mark.parametrize("name", list(RUNS))
def test_runs_with_round_to_convert_exactly_to_aligned_widths(tmp_path, base_file, name):
    main, flags, groups = RUNS[name]
    main([*SMOKE, "--init", str(base_file), "-o", str(tmp_path), "--round-to", "8", "--groups", groups, *flags])
    _, deps, attrs = read_hdf5(tmp_path / "finish_converted.hdf5")
    conv = attrs["conversion"]
    graph = arch_graph("src20")
    pruned = {g.id for g in graph.select(groups)}
    widths = graph.widths(deps)
    assert all(aligned(widths[g], graph.groups[g].width, 8) for g in pruned), deps
    assert any(widths[g] < graph.groups[g].width for g in pruned)
    assert conv["max_logit_diff"] < 1e-4
    if name == "resrep":
        assert conv["macs_ratio_to_base"] <= 0.6


def test_scratch_widths_are_aligned():
    args = scratch.parse(["-a", "src56", "--macs-target", "0.5", "--round-to", "8"])
    scratch.method.validate(args)
    assert all(d % 8 == 0 for d in args.deps) and args.deps != default_deps("src56")


@pytest.mark.parametrize("main", [exp_resrep.main, do_sfp.main, l1.main])
def test_round_to_below_1_is_refused(tmp_path, base_file, main):
    with pytest.raises((ValueError, SystemExit), match="round.to"):
        main([*SMOKE, "--init", str(base_file), "-o", str(tmp_path), "--round-to", "0", "--macs-target", "0.5"]
             if main is l1.main else [*SMOKE, "--init", str(base_file), "-o", str(tmp_path), "--round-to", "0"])


def test_the_comparison_takes_groups_and_round_to():
    import compare_methods
    from utils.registry import REGISTRY

    args = compare_methods.parse(["--groups", "all", "--round-to", "8"])
    assert (args.groups, args.round_to) == ("all", 8)
    ratios = {name: REGISTRY[name].solve("src56", 0.5, "all", 8) for name in ("csgd", "sfp", "l1", "scratch")}
    assert all(0 < float(r) < 1 for r in ratios.values()) and ratios["l1"] == ratios["scratch"] == ratios["csgd"]
    with pytest.raises(ValueError, match="--round-to 0"):
        compare_methods.parse(["--round-to", "0"])


def test_the_report_says_which_groups_alignment_and_latency_target():
    from utils.tools.compare import report_markdown

    settings = {"arch": "src20", "data": "synthetic", "macs_targets": [0.5], "budget": "smoke", "test_images": 100,
                "seeds": [0], "latency": "cpu", "date": "today", "groups": "all", "round_to": 8,
                "latency_targets": [0.6]}
    header = report_markdown([], settings, [], []).splitlines()[2]
    assert "groups pruned: all, widths in multiples of 8" in header and "ResRep aimed at 60%" in header
    plain = report_markdown([], {**settings, "groups": "internal", "round_to": 1, "latency_targets": None}, [], [])
    assert "groups pruned: internal;" in plain and "multiples" not in plain and "aimed at" not in plain
