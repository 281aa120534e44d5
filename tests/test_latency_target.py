"""--latency-target: a per-layer latency table (measured once, cached, interpolated), the ResRep mask walk that
charges each masked row its predicted latency and stops at the target, the run that records the predicted and
the measured speed-up, and the comparison that passes the latency target to ResRep only."""
import json
import os
import subprocess
import sys

import pytest
import torch
from helpers import SYNTHETIC, script

from base_model import default_deps
from rr.masks import LatencyCounter, select_masks
from rr.method import RESREP
from utils.pruning.channel_graph import arch_graph
from utils.tools import latency_table as lt
from utils.tools.store import read_attrs

exp_resrep = script(RESREP)

BATCH = 2  # tiny: the table and the speed-up are measured in a second or two
SMOKE = ["-a", "src20", *SYNTHETIC, "--epochs", "1", "--batch-size", "32",
         "--deterministic"]


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """The table's cache folder, in a temporary folder for the whole file."""
    with pytest.MonkeyPatch.context() as mp:
        folder = tmp_path_factory.mktemp("latency")
        mp.setattr(lt, "CACHE_DIR", str(folder))
        yield folder


@pytest.fixture(scope="module")
def table(cache):
    return lt.latency_table("src20", BATCH, "cpu", repeats=3)


def random_norms(graph, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return {g.id: torch.rand(g.width, generator=gen) for g in graph.select("internal")}


def test_interpolation_is_exact_at_grid_points_and_bilinear_between():
    entry = {"cin": [2, 4], "cout": [8, 16], "ms": [[1.0, 2.0], [3.0, 5.0]]}
    assert [lt.interpolate(entry, i, o) for i in (2, 4) for o in (8, 16)] == [1.0, 2.0, 3.0, 5.0]
    assert lt.interpolate(entry, 3, 12) == pytest.approx((1 + 2 + 3 + 5) / 4)
    assert lt.interpolate(entry, 1, 8) == 0.0  # linear below the grid (1 - 2 = -1), never negative
    assert lt.interpolate({"cin": [3], "cout": [8, 16], "ms": [[1.0, 2.0]]}, 3, 12) == 1.5  # a fixed width
    assert lt.grid(16, True) == [2, 4, 6, 8, 10, 12, 14, 16] and lt.grid(100, True)[-2:] == [96, 100]
    assert lt.grid(3, False) == [3]


def test_the_table_returns_its_measurements_at_grid_points_and_grows_with_width(table):
    specs, graph = lt.layer_specs("src20")
    assert set(table.layers) == {lc.module for lc in graph.layers}
    assert len(table.shapes) < len(table.layers)  # the blocks of a stage share their shapes
    for entry in table.shapes.values():
        for a, i in enumerate(entry["cin"]):
            for b, o in enumerate(entry["cout"]):
                assert lt.interpolate(entry, i, o) == pytest.approx(entry["ms"][a][b])
    big = table.shapes["conv k3x3 s1x1 p1x1 d1x1 in32x32 16->16"]  # the most MACs per pass
    assert big["ms"][-1][-1] > big["ms"][0][0]  # 16 -> 16 channels cost more than 2 -> 2
    base = default_deps("src20")
    assert table.predict(graph, base) > table.predict(graph, graph.deps_at(base, {
        g.id: g.width // 4 for g in graph.select("internal")}))


def test_the_cache_is_reused_and_remeasured_on_request(table, cache, monkeypatch, capsys):
    calls = []
    monkeypatch.setattr(lt, "measure_shape", lambda s, *a, **k: calls.append(s) or {
        "cin": [s["cin"]], "cout": [s["cout"]], "ms": [[1.0]]})
    again = lt.latency_table("src20", BATCH, "cpu")
    assert not calls and not again.measured and again.shapes == table.shapes and again.path == table.path
    assert "re-measure" not in capsys.readouterr().out
    stored = json.load(open(table.path))
    assert stored["batch"] == BATCH and stored["arch"] == "src20" and "threads" in stored["machine"]
    other = lt.latency_table("src20", BATCH + 1, "cpu")  # another batch: another file, measured
    assert other.measured and other.path != table.path and len(calls) == len(table.shapes)
    out = capsys.readouterr().out
    assert "re-measure with: python -m utils.tools.latency_table -a src20 --batch 3 --device cpu" in out
    lt.latency_table("src20", BATCH + 1, "cpu", remeasure=True)
    assert len(calls) == 2 * len(table.shapes)


def test_latency_counter_updates_equal_a_full_recount(table):
    graph, base = arch_graph("src20"), default_deps("src20")
    counter = LatencyCounter(graph, graph.widths(base), table)
    for gid in [g.id for g in graph.select("internal")] * 5:
        counter.remove_one(gid)
    assert counter.total == pytest.approx(table.predict(graph, graph.deps_at(base, counter.widths)), rel=1e-9)


def floor(table, graph, width):
    """The predicted latency ratio with every internal group at `width`: at batch 2 the layers' fixed costs
    keep it well above 0 (about 0.7 on the development CPU), so targets are set inside what can be reached."""
    base = default_deps("src20")
    narrow = graph.deps_at(base, {g.id: width for g in graph.select("internal")})
    return table.predict(graph, narrow) / table.predict(graph, base)


@pytest.mark.parametrize("part", [0.25, 0.5])
def test_the_walk_stops_as_soon_as_the_predicted_latency_is_at_the_target(table, part):
    graph, base = arch_graph("src20"), default_deps("src20")
    target = 1 - part * (1 - floor(table, graph, 1))
    norms = random_norms(graph)
    masks = select_masks(graph, base, norms, {}, None, 10**9, latency_table=table, latency_target=target)
    full = table.predict(graph, base)

    def ratio(masked):
        widths = {gid: graph.groups[gid].width - len(masked.get(gid, ())) for gid in norms}
        return table.predict(graph, graph.deps_at(base, widths)) / full

    assert ratio(masks) <= target + 1e-9
    # the rows masked are the smallest norms of all (ranked by norm, charged their cost); one fewer misses
    order = sorted((v.item(), gid, c) for gid, t in norms.items() for c, v in enumerate(t))
    n = sum(len(m) for m in masks.values())
    assert {(gid, c) for _, gid, c in order[:n]} == {(gid, c) for gid, m in masks.items() for c in m}
    fewer = {}
    for _, gid, c in order[:n - 1]:
        fewer.setdefault(gid, []).append(c)
    assert ratio(fewer) > target


def test_the_walk_with_round_to_meets_the_latency_target_in_aligned_steps(table):
    graph, base = arch_graph("src20"), default_deps("src20")
    target = 1 - 0.5 * (1 - floor(table, graph, 8))
    masks = select_masks(graph, base, random_norms(graph), {}, None, 10**9, round_to=8, latency_table=table,
                         latency_target=target)
    widths = {gid: graph.groups[gid].width - len(m) for gid, m in masks.items()}
    assert all(w % 8 == 0 for w in widths.values()) and widths != {g: graph.groups[g].width for g in widths}
    assert table.predict(graph, graph.deps_at(base, widths)) <= target * table.predict(graph, base) + 1e-9


def test_the_walk_without_a_latency_target_is_the_macs_walk(table):
    graph, base = arch_graph("src20"), default_deps("src20")
    norms = random_norms(graph, seed=3)
    for masked_now in ({}, {g: 2 for g in norms}):
        assert select_masks(graph, base, norms, masked_now, 0.5, 4, latency_table=table) == \
            select_masks(graph, base, norms, masked_now, 0.5, 4)
    with pytest.raises(ValueError, match="latency table"):
        select_masks(graph, base, norms, {}, None, latency_target=0.5)


def test_a_resrep_run_with_a_latency_target_converts_exactly_and_records_both_speedups(tmp_path, base_file, cache):
    exp_resrep.main([*SMOKE, "--init", str(base_file), "-o", str(tmp_path), "--max-steps", "4",
                     "--before-mask-iters", "0", "--mask-interval", "1", "--begin-granularity", "1000",
                     "--latency-target", "0.9", "--latency-batch", str(BATCH)])  # 0.9: reachable at batch 2
    conv = read_attrs(tmp_path / "finish_converted.hdf5")["conversion"]
    lat = conv["latency"]
    assert conv["max_logit_diff"] < 1e-4
    assert lat["target"] == 0.9 and lat["batch"] == BATCH and lat["device"] == "cpu"
    assert lat["predicted_ratio"] <= 0.9 + 1e-9
    assert lat["predicted_speedup"] == pytest.approx(1 / lat["predicted_ratio"])
    assert lat["measured_speedup"] == pytest.approx(lat["base_ms"] / lat["converted_ms"]) and lat["converted_ms"] > 0
    assert conv["macs_ratio_to_base"] < 1
    log = open(tmp_path / "log.txt").read()
    assert "predicted speed-up" in log and "measured" in log and "latency target 0.9 met" in log
    config = json.load(open(tmp_path / "config.json"))
    assert config["extra"]["resrep"]["latency_target"] == 0.9 and config["extra"]["resrep"]["macs_target"] is None


def test_a_latency_target_out_of_reach_is_warned_about(tmp_path, base_file, cache):
    exp_resrep.main([*SMOKE, "--init", str(base_file), "-o", str(tmp_path), "--max-steps", "1",
                     "--before-mask-iters", "0", "--mask-interval", "1", "--latency-target", "0.2",
                     "--latency-batch", str(BATCH)])  # at batch 2 the layers' fixed costs keep it above ~0.7
    assert "warning: latency target 0.2 is out of reach" in open(tmp_path / "log.txt").read()


@pytest.mark.parametrize("flags, match", [(["--latency-target", "0.5", "--flops-target", "0.5"], "it replaces --macs-target"),
                                          (["--latency-target", "0"], "latency-target"),
                                          (["--latency-target", "0.5", "--latency-batch", "0"], "latency-batch")])
def test_bad_latency_flags_are_refused(tmp_path, base_file, flags, match):
    with pytest.raises(ValueError, match=match):
        exp_resrep.main([*SMOKE, "--init", str(base_file), "-o", str(tmp_path), *flags])
    assert not os.listdir(tmp_path)


def test_the_comparison_passes_the_latency_target_to_resrep_only(tmp_path):
    import compare_methods
    from utils.registry import REGISTRY

    args = compare_methods.parse(["--latency-target", "0.6", "-o", str(tmp_path)])
    assert args.latency_targets == [0.6]
    with pytest.raises(ValueError, match="per --macs-target"):
        compare_methods.parse(["--macs-target", "0.3,0.5", "--latency-target", "0.6"])
    stages = compare_methods.Stages(args)
    seen = {}
    for name in ("resrep", "csgd"):
        stage, _ = stages.entry(REGISTRY[name], "base.hdf5", 0.5, 0)  # planned, not run
        seen[stage.method.script] = (stage.folder, stage.label, stage.argv)
    folder, label, argv = seen["rr/exp_resrep.py"]
    assert argv[argv.index("--latency-target") + 1] == "0.6" and "--macs-target" not in argv
    assert folder.endswith(os.path.join("resrep", "latency0.6-seed0")) and "latency" in label
    assert "--latency-target" not in seen["csgd/do_csgd.py"][2] and "--macs-target" in seen["csgd/do_csgd.py"][2]
    note = REGISTRY["resrep"].note(
        {"pruned_row_norm": 0.0, "latency": {"target": 0.6, "batch": 64, "device": "cpu", "predicted_speedup": 1.8,
                                             "measured_speedup": 1.5}}, None)
    assert "predicted speed-up 1.80x, measured 1.50x" in note and "MACs target" in note


def test_the_table_command_remeasures_and_the_tool_imports_no_training_code(cache, capsys):
    lt.main(["-a", "src20", "--batch", str(BATCH), "--device", "cpu", "--repeats", "1"])
    out = capsys.readouterr().out
    assert "re-measure with: python -m utils.tools.latency_table -a src20 --batch 2 --device cpu" in out
    assert "predicted" in out and "measured" in out
    code = "import sys, utils.tools.latency_table; print([m for m in sys.modules if m.startswith('utils.training')])"
    r = subprocess.run([sys.executable, "-c", code], cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                       capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.strip() == "[]", r.stderr
