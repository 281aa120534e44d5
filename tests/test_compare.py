"""The comparison: one command runs the four methods and the baselines over seeds and MACs targets, and
writes a table with mean +- std and n, verdicts generated from the numbers, two plots and a JSON record."""
import json
import os
from fractions import Fraction

import matplotlib.image
import pytest
from helpers import SMOKE_COMPARISON, exit_code

import compare_methods
from base_model import default_deps
from baselines.plain import BASE
from csgd.schedule import Schedule, target_deps
from sfp.method import rate_for
from utils.pruning.channel_graph import arch_graph
from utils.pruning.flops import arch_uniform_ratio, count
from utils.registry import REGISTRY
from utils.tools.compare import aggregate, verdicts
from utils.tools.store import read_hdf5


@pytest.mark.parametrize("arch", ["src20", "src56", "vc"])
def test_csgd_ratio_and_sfp_rate_meet_the_macs_target(arch):
    graph = arch_graph(arch)
    base = count(graph, default_deps(arch))[0]
    internal = {p.index for g in graph.by_role("internal") for p in g.producers}
    for pick in (arch_uniform_ratio, rate_for):
        for target in (0.5, 0.7):
            value, deps = pick(arch, target)
            assert 0 < float(value) < 1
            assert abs(count(graph, deps)[0] / base - target) < 0.03, (pick.__name__, arch, target)
            assert all(d == w for i, (d, w) in enumerate(zip(deps, default_deps(arch)))
                       if i not in internal)  # only internal layers are pruned, as ResRep and AOFP
    ratio, deps = arch_uniform_ratio(arch, 0.5)  # what the comparison asks of C-SGD is what C-SGD's schedule then does
    assert deps == target_deps(arch, graph, Schedule((Fraction(ratio),), "internal", "floor"), 0)


@pytest.mark.parametrize("budget", ["demo", "study"])
def test_every_row_of_a_budget_trains_a_methods_epochs(budget):
    """Equal budgets, as the baselines' papers compare: each method, L1's fine-tuning and base+ train the same
    epochs; AOFP's search cap plus its fine-tuning make those epochs; scratch trains the base's plus them."""
    def epochs(flags, name="--epochs"):
        given = [int(value) for flag, value in zip(flags, flags[1:]) if flag == name]
        return given[-1] if given else 0  # the last one wins, as in argparse

    entries = REGISTRY
    method = epochs(entries["resrep"].budgets[budget])
    assert method > 0
    for name in ("csgd", "sfp", "l1", "base+"):
        assert epochs(entries[name].budgets[budget]) == method, name
    aofp = entries["aofp"].budgets[budget]
    assert epochs(aofp) + epochs(aofp, "--ft-epochs") == method
    base = epochs(BASE.budgets[budget])
    assert epochs(entries["scratch"].budgets[budget]) == base + method


SMOKE = SMOKE_COMPARISON


@pytest.mark.slow
def test_the_comparison_runs_every_method_and_baseline_and_writes_table_and_plots(tmp_path, capsys):
    out = str(tmp_path / "cmp")
    argv = [*SMOKE, "-o", out, "--extra", "sfp=--epoch-prune 1"]
    assert compare_methods.main([*argv, "--onnx"]) == 0
    printed = capsys.readouterr().out
    record = json.load(open(os.path.join(out, "comparison.json")))
    rows = {r["name"]: r for r in record["rows"]}
    assert list(rows) == ["base", "resrep", "csgd", "aofp", "sfp", "l1", "scratch", "base+"]
    for name in ("resrep", "csgd", "aofp", "sfp", "l1"):
        r = rows[name]
        assert r["exact"] is True and r["logit_diff"] < 1e-4, name
        assert r["before_top1"] is not None and r["n"] == 1 and r["target"] == 0.5
    for name in ("resrep", "csgd", "aofp", "sfp", "l1", "scratch"):
        r = rows[name]
        assert abs(r["macs_ratio"] - 0.5) < 0.03, (name, r["macs_ratio"])  # one MACs target for all
        assert r["latency_b1"] > 0 and r["speedup_b64"] > 0 and r["params"] < rows["base"]["params"]
    assert rows["l1"]["macs"] == rows["scratch"]["macs"] == rows["csgd"]["macs"]  # one uniform ratio
    assert rows["base+"]["macs"] == rows["base"]["macs"] and rows["base+"]["target"] is None
    assert rows["scratch"]["logit_diff"] is None and rows["scratch"]["exact"] is None  # nothing converted
    for run in record["runs"]:
        assert os.path.isfile(run["file"]) and ("onnx_diff" not in run or run["onnx_diff"] < 1e-4)
        base = record["runs"][0]  # ONNX Runtime's latency beside PyTorch's, over the base timed in the same turns
        assert run["ort_latency_b1"] > 0 and run["ort_latency_b64"] > 0
        assert run["ort_speedup_b64"] == pytest.approx(base["ort_latency_b64"] / run["ort_latency_b64"])
    assert record["settings"]["test_images"] == 128 and record["settings"]["seeds"] == [0]
    table = open(os.path.join(out, "comparison.md")).read()
    lines = [line for line in table.splitlines() if line.startswith("| ")]
    assert len(lines) == 1 + 8 and "max logit diff" in lines[0] and "ONNX Runtime diff" in lines[0]
    assert "| speed-up b64 | ORT latency b1 ms | ORT latency b64 ms | ORT speed-up b64 |" in lines[0]
    assert "not resolved with n = 1" in table and "python baselines/l1.py -a src20" in table
    assert "--max-steps 3 --epoch-prune 1" in table and table.strip() in printed
    for png in ("comparison.png", "speedup.png"):
        image = matplotlib.image.imread(os.path.join(out, png))
        assert image.shape[0] > 300 and image.shape[1] > 400
    # Re-running finds every stage done and only measures again.
    assert compare_methods.main(argv) == 0
    assert capsys.readouterr().out.count(": done (") == 8
    record = json.load(open(os.path.join(out, "comparison.json")))
    assert not any(k.startswith("ort_") for r in record["rows"] + record["runs"] for k in r)  # no --onnx, no ORT
    # ... and refuses to reuse a stage made with other settings.
    with pytest.raises(ValueError, match="seed0 was made by another command"):
        compare_methods.main([*argv, "--extra", "resrep=--lasso-strength 1e-3"])


@pytest.mark.slow
def test_seeds_and_targets_give_means_curves_and_verdicts(tmp_path):
    out = str(tmp_path / "cmp")
    argv = [*SMOKE, "-o", out, "--methods", "sfp", "--seeds", "0,1", "--macs-target", "0.4,0.6"]
    assert compare_methods.main(argv) == 0
    record = json.load(open(os.path.join(out, "comparison.json")))
    runs = record["runs"]
    assert len(runs) == 1 + 2 * 2 * 3 + 2  # base; sfp, l1, scratch at 2 targets x 2 seeds; base+ per seed
    assert os.path.isdir(os.path.join(out, "sfp", "macs0.4-seed1")) and os.path.isdir(os.path.join(out, "base+", "seed1"))
    rows = {(r["name"], r["target"]): r for r in record["rows"]}
    sfp = rows[("sfp", 0.4)]
    tops = [r["final_top1"] for r in runs if r["name"] == "sfp" and r["target"] == 0.4]
    assert sfp["n"] == 2 and sfp["final_top1"] == pytest.approx(sum(tops) / 2)
    assert sfp["final_top1_std"] == pytest.approx(abs(tops[0] - tops[1]) / 2 ** 0.5)
    assert rows[("sfp", 0.4)]["macs"] < rows[("sfp", 0.6)]["macs"]
    assert len(record["verdicts"]) == 2 and all("n = 2" in v for v in record["verdicts"])


def test_verdicts_say_what_the_spread_allows():
    def row(name, target, mean, std, n=3, baseline=False):
        return {"name": name, "label": name, "target": target, "n": n, "final_top1": mean, "final_top1_std": std,
                "baseline": baseline}

    rows = [row("m", 0.5, 60.0, 0.5), row("l1", 0.5, 58.0, 0.5, baseline=True),
            row("scratch", 0.5, 59.5, 0.4, baseline=True)]
    (text,) = verdicts(rows)
    assert "beats l1 (58.00 ± 0.50) by 2.00 points, more than the seeds' spread (1.00)" in text
    assert "within the seeds' spread (0.90) of scratch (59.50 ± 0.40): +0.50 points" in text
    rows[0]["final_top1"] = 56.0
    assert "loses to l1 (58.00 ± 0.50) by 2.00 points" in verdicts(rows)[0]
    rows = [row("m", 0.5, 60.0, None, n=1), row("l1", 0.5, 58.0, None, n=1, baseline=True)]
    assert "+2.00 points against l1 (58.00): not resolved with n = 1" in verdicts(rows)[0]


def test_aggregate_means_stds_and_the_worst_proof():
    runs = [{"name": "m", "label": "M", "target": 0.5, "seed": s, "final_top1": t, "logit_diff": d, "exact": True}
            for s, t, d in ((0, 50.0, 1e-6), (1, 52.0, 3e-6), (2, 54.0, 2e-6))]
    (row,) = aggregate(runs)
    assert (row["n"], row["final_top1"], row["final_top1_std"], row["logit_diff"]) == (3, 52.0, 2.0, 3e-6)
    assert row["seeds"] == [0, 1, 2] and row["exact"] is True and row["converted_top1"] is None
    assert "ort_latency_b1" not in row  # ONNX Runtime's columns only with --onnx
    for r, ms in zip(runs, (1.0, 2.0, 3.0)):
        r["ort_latency_b1"] = ms
    assert aggregate(runs)[0]["ort_latency_b1"] == 2.0 and aggregate(runs)[0]["ort_latency_b1_std"] == 1.0


@pytest.mark.parametrize("argv, needle", [
    (["--methods", "resrep,obd"], "--methods obd: choose from resrep, csgd, aofp, sfp"),
    (["--baselines", "l2"], "--baselines l2: choose from l1, scratch, base+"),
    (["--macs-target", "1.5"], "--macs-target 1.5: every fraction of the MACs to keep must be in (0, 1)"),
    (["--macs-target", "0.5,x"], "--macs-target '0.5,x': expected a comma list of numbers"),
    (["--seeds", "0,0"], "--seeds 0,0: give distinct seeds"),
    (["-a", "src57"], "unknown arch 'src57'"),
    (["--base", "/nonexistent.hdf5"], "--init /nonexistent.hdf5: no such file"),  # --base: the older spelling
    (["--extra", "pruning=--epochs 2"], "--extra 'pruning=--epochs 2': expected STAGE=FLAGS"),
])
def test_bad_input_gives_one_error_line(argv, needle, capsys):
    assert exit_code(compare_methods.main, argv) == 2
    assert needle in capsys.readouterr().err


def test_the_study_budget_starts_from_the_shipped_base(tmp_path, capsys):
    """src20 on CIFAR-10 ships its study-budget base (base_model/weights): the comparison starts from it instead of
    training it again, unless --init, another seed or --extra base=... asks for another."""
    from baselines.plain import SHIPPED, shipped_base

    path = SHIPPED[("src20", "cifar10")]
    if not os.path.isfile(path):
        pytest.skip(f"{path} is not in this checkout")
    _, deps, attrs = read_hdf5(path)
    assert deps == default_deps("src20") and attrs["metrics"]["samples"] == 10000 and attrs["metrics"]["top1"] > 80
    assert attrs["training"]["epochs"] == 25 and attrs["training"]["data"] == "cifar10" and attrs["training"]["seed"] == 0
    assert attrs["provenance"]["commit"] and "cores" in attrs["provenance"]["hardware"]
    base = ["--budget", "study", "--data", "cifar10", "-o", str(tmp_path)]
    assert os.path.samefile(compare_methods.Stages(compare_methods.parse(base)).base(), path)
    assert "base: the shipped src20 base" in capsys.readouterr().out
    assert shipped_base("src20", "cifar10", "paper") is None and shipped_base("src56", "cifar10", "study") is None
    assert shipped_base("src20", "cifar10-mini", "demo") == path  # the main job prunes it on cifar10-mini
    assert shipped_base("src20", "synthetic", "demo") is None
    stages = compare_methods.Stages(compare_methods.parse([*base, "--init", __file__]))
    assert stages.base() == __file__
