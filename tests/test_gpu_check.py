"""The GPU check, run on the CPU at tiny sizes: one table, one JSON file whose numbers hold together."""
import contextlib
import io
import json
import os

import pytest
import torch

from base_model import build_model, default_deps
from benchmarks import gpu_check
from helpers import exit_code
from utils.pruning.channel_graph import arch_graph
from utils.pruning.flops import count


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """Run the check once (about 20 s on one CPU thread); (JSON record, stdout, output folder)."""
    out = tmp_path_factory.mktemp("gpu_check")
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        gpu_check.main(["--device", "cpu", "--tiny", "-o", str(out)])
    with open(out / "gpu_check.json") as f:
        return json.load(f), buf.getvalue(), out


def test_every_section_is_there_with_the_device_and_versions(run):
    r, stdout, out = run
    assert {"epoch", "steps", "latency", "table", "device", "device_name", "torch", "total_s"} <= set(r)
    assert r["device"] == "cpu" and r["torch"] == torch.__version__ and r["tiny"] and r["arch"] == "src20"
    assert os.listdir(out) == ["gpu_check.json"]  # no temporary file, no engine folder left behind
    printed = stdout.splitlines()
    assert printed[:len(r["table"])] == r["table"]  # the one table, as printed
    assert r["device_name"] in printed[0] and torch.__version__ in printed[0]
    assert sum(line.startswith("(c) latency") for line in printed) == 3 * 2  # base + 2 narrow nets, 2 batches
    for unit in (" s ", "img/s", "ms/step", " ms "):
        assert any(unit in line for line in printed), unit


def test_the_epoch_is_one_pass_over_the_images(run):
    e, size = run[0]["epoch"], gpu_check.SIZES["tiny"]
    assert e["images"] == size["images"] and e["batch"] == size["batch"]
    assert e["steps"] == size["images"] // size["batch"]  # the engine drops a last partial batch
    assert e["images_trained"] == e["steps"] * e["batch"]
    assert e["seconds"] > 0 and e["img_per_s"] == pytest.approx(e["images_trained"] / e["seconds"])
    assert e["goal_s"] == gpu_check.GOAL_EPOCH_S and e["goal_met"] is None  # the goal is for the GPU, full size
    assert e["channels_last"] and e["precision"] in ("fp32", "bf16 autocast")


def test_step_ratios_are_the_ratios_of_the_reported_times(run):
    s = run[0]["steps"]
    graph = arch_graph("src20")
    for k in ("plain_ms", "resrep_ms", "csgd_ms", "resrep_mask_update_ms"):
        assert s[k] > 0, k
    assert s["resrep_ratio"] == pytest.approx(s["resrep_ms"] / s["plain_ms"])
    assert s["csgd_ratio"] == pytest.approx(s["csgd_ms"] / s["plain_ms"])
    assert s["resrep_groups"] == len(graph.select("internal"))  # compactors on the internal groups
    assert s["resrep_masked_rows"] > 0  # the masks were at the MACs target while the steps were timed
    assert s["csgd_groups"] == len(graph.select("all"))  # src20's first iteration slims every group


def test_the_narrow_nets_have_about_half_the_macs_and_speedups_are_time_ratios(run):
    lat = run[0]["latency"]
    graph, base_deps = arch_graph("src20"), default_deps("src20")
    base_macs = count(graph, base_deps)[0]
    assert set(lat["models"]) == {"base", "narrow internal", "narrow all"}
    assert lat["models"]["base"]["deps"] == base_deps and lat["models"]["base"]["macs"] == base_macs
    assert lat["dtype"] == "float32"  # bf16 is timed on CUDA only
    for name, m in lat["models"].items():
        assert m["macs"] == count(graph, m["deps"])[0] and m["macs_ratio"] == pytest.approx(m["macs"] / base_macs)
        build_model("src20", m["deps"])  # valid widths: the narrow net builds
        if name != "base":
            assert 0.45 <= m["macs_ratio"] <= 0.55, (name, m["macs_ratio"])
        for b in lat["batches"]:
            assert m["ms"][str(b)] > 0
            assert m["speedup"][str(b)] == pytest.approx(lat["models"]["base"]["ms"][str(b)] / m["ms"][str(b)])
    widths = graph.widths(lat["models"]["narrow internal"]["deps"])
    base_widths = graph.widths(base_deps)
    for g in graph.groups:  # "internal" narrows the internal groups only; "all" narrows the residual ones too
        assert (widths[g.id] < base_widths[g.id]) == (g.role == "internal"), g.id
    all_widths = graph.widths(lat["models"]["narrow all"]["deps"])
    assert all(all_widths[g.id] < base_widths[g.id] for g in graph.groups)


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is here")
def test_cuda_without_a_gpu_says_what_to_run_instead(tmp_path, capsys):
    assert exit_code(gpu_check.main, ["--tiny", "-o", str(tmp_path / "out")]) == 2  # --device cuda is the default
    err = capsys.readouterr().err
    assert err.startswith("error: --device cuda: no CUDA GPU") and "--device cpu --tiny" in err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("argv, message", [
    (["--device", "tpu"], "use cuda, cuda:N or cpu"),
    (["--device", "meta"], "runs on cuda or cpu"),
    (["--device", "cpu", "-a", "sres50"], "CIFAR-sized images"),
    (["--device", "cpu", "-a", "src57"], "unknown arch 'src57'"),
])
def test_bad_flags_are_refused_before_any_work(argv, message, tmp_path, capsys):
    assert exit_code(gpu_check.main, [*argv, "--tiny", "-o", str(tmp_path / "out")]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
