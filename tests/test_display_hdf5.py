"""display_hdf5.py: per-array statistics, totals, and widths with MACs when the file has deps."""
import subprocess
import sys

import pytest
import torch
from helpers import exit_code

import display_hdf5
from base_model import build_model, default_deps
from utils.tools.store import save_hdf5


def test_reports_arrays_totals_and_macs(tmp_path, capsys):
    deps = default_deps("src20")
    deps[1] = 8  # an internal layer halved
    model = build_model("src20", deps)
    with torch.no_grad():
        model.linear.bias.zero_()
    path = tmp_path / "narrow.hdf5"
    save_hdf5(path, model.state_dict(), deps=deps, arch="src20")
    assert exit_code(display_hdf5.main, [str(path)]) == 0
    out = capsys.readouterr().out
    line = next(l for l in out.splitlines() if l.startswith("stage1.block0.conv1.conv.weight "))
    assert "(8, 16, 3, 3)" in line and "float32" in line
    bias = next(l for l in out.splitlines() if l.startswith("linear.bias "))
    assert bias.split()[-2:] == ["10", "10"]  # ten exact zeros, ten near-zero
    n = sum(t.numel() for t in model.state_dict().values())
    assert f"{len(model.state_dict())} arrays, {n:,} numbers" in out
    from utils.pruning.flops import arch_cost
    c = arch_cost("src20", deps)
    assert f"src20: {c['macs']:,} MACs" in out and f"{c['params']:,} params" in out
    assert str(deps) in out


def test_file_without_deps(tmp_path, capsys):
    path = tmp_path / "plain.hdf5"
    save_hdf5(path, {"a": torch.ones(3)})
    assert exit_code(display_hdf5.main, [str(path)]) == 0
    assert "no deps" in capsys.readouterr().out


@pytest.mark.slow
def test_missing_and_non_hdf5_files(tmp_path):
    junk = tmp_path / "junk.hdf5"
    junk.write_text("not hdf5")
    for path, needle in ((tmp_path / "none.hdf5", "no such file"), (junk, "not an hdf5 file")):
        r = subprocess.run([sys.executable, "display_hdf5.py", str(path)], capture_output=True, text=True)
        assert r.returncode == 2
        assert r.stderr.startswith("error:") and needle in r.stderr and len(r.stderr.splitlines()) == 1
