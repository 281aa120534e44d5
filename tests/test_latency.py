"""Latency measurement: the benchmark runs on a converted file and prints speed-up beside MACs ratio; ONNX
Runtime runs the same fused networks, timed in the same turns as PyTorch."""
import json
import re

import pytest
import torch
from helpers import example_input, exit_code, random_model

from benchmarks import bench_latency
from utils.pruning.channel_graph import arch_graph
from utils.pruning.flops import count
from utils.tools.deploy import deploy_form
from utils.tools.latency import ORT, measure, onnx_runtime_models
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
    rows = [line for line in out.splitlines() if re.match(r"pytorch +(conv\+bn|fused) +float32", line)]
    assert len(rows) == 4
    for line in rows:  # measured speed-up and the MACs ratio side by side, on every row
        assert re.search(r"\d+\.\d\dx +" + f"{ratio:.3f}$", line), line
    assert f"MACs ratio {ratio:.3f}" in out
    assert exit_code(bench_latency.main, ["-a", "src20", "--deps", "16,8", "--repeats", "1"]) == 2
    assert "deps" in capsys.readouterr().err


def test_onnx_runtime_runs_the_same_fused_network_with_pytorchs_threads():
    model = random_model("src20", NARROW)
    (ort,) = onnx_runtime_models({"narrow": deploy_form(model, "src20")}, "src20").values()
    options = ort.session.get_session_options()
    assert options.intra_op_num_threads == torch.get_num_threads()  # the same cores as PyTorch's passes
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    for batch in (1, 3):
        x = example_input("src20", batch=batch)
        with torch.no_grad():
            want = model.eval()(x)  # the conv+BN model PyTorch times
        got = ort(x)
        assert got.shape == want.shape and want.abs().max() > 1e-2
        assert (got - want).abs().max().item() < 1e-4


@pytest.mark.slow
def test_onnx_runtime_is_timed_in_the_same_turns_as_pytorch():
    models = {"narrow": random_model("src20", NARROW), "base": random_model("src20")}
    ms = measure(models, "src20", 32, "cpu", batches=(1, 2), repeats=2, forms=("fused",), onnx=True)
    for name in ("narrow", "base"):
        assert set(ms[name]) == {("fused", "float32", b) for b in (1, 2)} | {("fused", "float32", b, ORT) for b in (1, 2)}
        assert all(v > 0 for v in ms[name].values())
    with pytest.raises(ValueError, match="fused form"):
        measure(models, "src20", 32, "cpu", repeats=1, forms=("conv+bn",), onnx=True)
    with pytest.raises(ValueError, match="device cpu"):
        measure(models, "src20", 32, "cuda", repeats=1, onnx=True)


@pytest.mark.slow
def test_the_benchmark_adds_onnx_runtime_rows_with_model_base_and_speed_up(capsys):
    argv = ["-a", "src20", "--deps", ",".join(map(str, NARROW)), "--repeats", "2", "--warmup", "1", "--batches", "1,2"]
    assert exit_code(bench_latency.main, [*argv, "--forms", "fused", "--onnx", "--json"]) == 0
    out = capsys.readouterr().out
    rows = json.loads(out.strip().splitlines()[-1])["rows"]
    assert [(r["engine"], r["form"], r["dtype"], r["batch"]) for r in rows] == [
        ("pytorch", "fused", "float32", 1), ("pytorch", "fused", "float32", 2),
        (ORT, "fused", "float32", 1), (ORT, "fused", "float32", 2)]
    for r in rows:
        assert r["model_ms"] > 0 and r["base_ms"] > 0 and r["speedup"] == pytest.approx(r["base_ms"] / r["model_ms"])
    graph = arch_graph("src20")
    ratio = count(graph, NARROW)[0] / count(graph, [16] * 7 + [32] * 7 + [64] * 7)[0]
    printed = [line for line in out.splitlines() if line.startswith(ORT)]
    assert len(printed) == 2 and all(re.search(r"\d+\.\d\dx +" + f"{ratio:.3f}$", line) for line in printed)
    assert exit_code(bench_latency.main, [*argv, "--forms", "conv+bn", "--onnx"]) == 2
    assert "fused form" in capsys.readouterr().err
