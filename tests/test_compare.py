"""The comparison of the four methods: one command, a table, a plot, every conversion exact."""
import json
import os

import matplotlib.image
import pytest

import compare_methods
from base_model import default_deps
from csgd.comparison import ratio_for
from sfp.comparison import rate_for
from utils.command import run_main
from utils.pruning.channel_graph import arch_graph
from utils.pruning.flops import count


@pytest.mark.parametrize("arch", ["src20", "src56", "vc"])
def test_csgd_ratio_and_sfp_rate_meet_the_macs_target(arch):
    graph = arch_graph(arch)
    base = count(graph, default_deps(arch))[0]
    for pick in (ratio_for, rate_for):
        for target in (0.5, 0.7):
            value, deps = pick(arch, target)
            assert 0 < float(value) < 1
            assert abs(count(graph, deps)[0] / base - target) < 0.03, (pick.__name__, arch, target)
            internal = {p.index for g in graph.by_role("internal") for p in g.producers}
            assert all(d == w for i, (d, w) in enumerate(zip(deps, default_deps(arch)))
                       if i not in internal)  # only internal layers are pruned, as ResRep and AOFP


def test_the_comparison_runs_end_to_end_and_writes_table_and_plot(tmp_path, capsys):
    out = str(tmp_path / "cmp")
    argv = ["--budget", "smoke", "-o", out, "--device", "cpu", "--latency-repeats", "1", "--extra", "sfp=--epoch-prune 1"]
    assert compare_methods.main([*argv, "--onnx"]) == 0
    printed = capsys.readouterr().out
    record = json.load(open(os.path.join(out, "comparison.json")))
    rows = {r["name"]: r for r in record["rows"]}
    assert list(rows) == ["base", "resrep", "csgd", "aofp", "sfp"]
    for name in compare_methods.METHODS:
        r = rows[name]
        assert r["exact"] is True and r["logit_diff"] < 1e-4, name
        assert abs(r["macs_ratio"] - 0.5) < 0.03, (name, r["macs_ratio"])  # one MACs target for all four
        assert r["latency_b1"] > 0 and r["latency_b64"] > 0 and r["speedup_b64"] > 0
        assert r["onnx_diff"] < 1e-4 and os.path.isfile(r["onnx"])
        assert r["params"] < rows["base"]["params"]
    table = open(os.path.join(out, "comparison.md")).read()
    lines = [line for line in table.splitlines() if line.startswith("| ")]
    assert len(lines) == 1 + 5 and "max logit diff" in lines[0] and "latency b64 ms" in lines[0]
    assert all(line.split(" | ")[11] == "yes" for line in lines[2:])  # the 'exact' column
    assert "python rr/exp_resrep.py -a src20" in table and "--max-steps 3 --epoch-prune 1" in table
    assert table.strip() in printed
    png = matplotlib.image.imread(os.path.join(out, "comparison.png"))
    assert png.shape[0] > 300 and png.shape[1] > 400
    # Re-running finds every stage done and only measures again.
    assert compare_methods.main(argv) == 0
    assert capsys.readouterr().out.count(": done (") == 5
    # ... and refuses to reuse a stage made with other settings.
    with pytest.raises(ValueError, match="resrep was made by another command"):
        compare_methods.main([*argv, "--extra", "resrep=--lasso-strength 1e-3"])


@pytest.mark.parametrize("argv, needle", [
    (["--methods", "resrep,obd"], "--methods obd: choose from resrep, csgd, aofp, sfp"),
    (["--macs-target", "1.5"], "--macs-target 1.5: the fraction of the MACs to keep must be in (0, 1)"),
    (["-a", "src57"], "unknown arch 'src57'"),
    (["--base", "/nonexistent.hdf5"], "--base /nonexistent.hdf5: no such file"),
    (["--extra", "pruning=--epochs 2"], "--extra 'pruning=--epochs 2': expected STAGE=FLAGS"),
])
def test_bad_input_gives_one_error_line(argv, needle, capsys):
    with pytest.raises(SystemExit) as e:
        run_main(lambda: compare_methods.main(argv))
    assert e.value.code == 2 and needle in capsys.readouterr().err
