"""Latency measurement: the benchmark runs on a converted file and prints speed-up beside MACs ratio."""
import re

import torch

from benchmarks import bench_latency
from helpers import exit_code, random_model
from utils.pruning.channel_graph import arch_graph
from utils.pruning.flops import count
from utils.tools.latency import deploy_form, measure
from utils.tools.store import save_hdf5

NARROW = [16, 8, 16, 8, 16, 8, 16, 32, 16, 32, 16, 32, 16, 32, 64, 32, 64, 32, 64, 32, 64]


def test_measure_times_both_forms_and_the_fused_form_is_equal():
    model = random_model("src20", NARROW)
    ms = measure({"narrow": model, "base": random_model("src20")}, "src20", 32, "cpu", batches=(1, 2), repeats=1)
    assert set(ms) == {"narrow", "base"}
    ms = ms["narrow"]
    assert set(ms) == {(f, "float32", b) for f in ("conv+bn", "fused") for b in (1, 2)}
    assert all(v > 0 for v in ms.values())
    fused = deploy_form(model, "src20")
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fused.modules())
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert (fused(x) - model.eval()(x)).abs().max() < 1e-4
    assert deploy_form(fused, "src20") is not fused  # already fused: a copy, unchanged


def test_the_benchmark_prints_speed_up_and_macs_ratio_for_a_converted_file(tmp_path, capsys):
    path = tmp_path / "converted.hdf5"
    save_hdf5(path, random_model("src20", NARROW).state_dict(), deps=NARROW, arch="src20")
    assert exit_code(bench_latency.main, [str(path), "--repeats", "1", "--batches", "1,2"]) == 0
    out = capsys.readouterr().out
    graph = arch_graph("src20")
    ratio = count(graph, NARROW)[0] / count(graph, [16] * 7 + [32] * 7 + [64] * 7)[0]
    rows = [line for line in out.splitlines() if re.match(r"(conv\+bn|fused) +float32", line)]
    assert len(rows) == 4
    for line in rows:  # measured speed-up and the MACs ratio side by side, on every row
        assert re.search(r"\d+\.\d\dx +" + f"{ratio:.3f}$", line), line
    assert f"MACs ratio {ratio:.3f}" in out
    assert exit_code(bench_latency.main, ["-a", "src20", "--deps", "16,8", "--repeats", "1"]) == 2
    assert "deps" in capsys.readouterr().err
