"""The paper budgets, planned without running (compare_methods.py --dry-run): each method at its paper's headline
setting on src56 with its original recipe (`paper`) or a quarter of its epochs (`paper-quarter`); the reproduction
table built from the registry's headlines; and the main job's plan from the shipped src20 base."""
import json
import os
import re

import pytest

import compare_methods
from base_model import default_deps
from utils.pruning.channel_graph import arch_graph
from utils.pruning.flops import count
from sfp.zeroing import num_pruned
from utils.registry import REGISTRY, headlines
from utils.tools import reproduction
from utils.training import skeleton

PAPER = ["-a", "src56", "--data", "cifar10"]


def plan(argv, capsys, tmp_path):
    assert compare_methods.main([*argv, "--dry-run", "-o", str(tmp_path / "out")]) == 0
    assert not os.path.exists(tmp_path / "out")  # a plan writes nothing
    text = capsys.readouterr().out
    commands = {line.split()[1]: line.split()[2:] for line in text.splitlines() if line.startswith("     python ")}
    return text, commands


def flag(argv, name):
    values = [v for f, v in zip(argv, argv[1:]) if f == name]
    return values[-1] if values else None


def test_the_paper_budget_runs_each_method_at_its_headline_setting(capsys, tmp_path):
    text, commands = plan(PAPER, capsys, tmp_path)
    assert set(commands) == {"train_base_model.py", "rr/exp_resrep.py", "csgd/do_csgd.py", "aofp/do_aofp.py",
                             "sfp/do_sfp.py"}  # no baselines by default in the paper budgets
    assert flag(commands["rr/exp_resrep.py"], "--macs-target") == "0.4677"  # the original's 0.471
    csgd = commands["csgd/do_csgd.py"]
    assert flag(csgd, "--ratios") == "5/8" and flag(csgd, "--groups") == "all"
    assert flag(commands["aofp/do_aofp.py"], "--macs-target") == "0.4969"  # the original's 0.50
    assert flag(commands["sfp/do_sfp.py"], "--rate") == "0.6" and "--init" in commands["sfp/do_sfp.py"]  # from the base
    for argv in commands.values():
        assert flag(argv, "--epochs") is None  # the original recipes: 240, 480, 600, 600 + 600, 200 epochs
    # steps = epochs x (50,000 // batch): base 240 x 781, ResRep 480 x 781, C-SGD 600 x 781, AOFP (600 + 600) x 781,
    # SFP 200 x 390
    assert f"total: {(240 + 480 + 600 + 1200) * 781 + 200 * 390:,} training steps" in text
    assert "H200-minutes" in text


def test_paper_quarter_is_a_quarter_of_every_stages_epochs(capsys, tmp_path):
    text, commands = plan([*PAPER, "--budget", "paper-quarter"], capsys, tmp_path)
    epochs = {s: flag(a, "--epochs") for s, a in commands.items()}
    assert epochs == {"train_base_model.py": "60", "rr/exp_resrep.py": "120", "csgd/do_csgd.py": "150",
                      "aofp/do_aofp.py": "150", "sfp/do_sfp.py": "50"}
    assert flag(commands["aofp/do_aofp.py"], "--ft-epochs") == "150"
    assert flag(commands["sfp/do_sfp.py"], "--warmup-epochs") == "0.25"
    # the schedules are compressed with the epochs, step-based constants are kept
    cfgs = {s: skeleton.check(REGISTRY_BY_SCRIPT[s], a, start=False) for s, a in commands.items()}
    assert cfgs["train_base_model.py"][1].milestones == (30, 45)
    assert cfgs["csgd/do_csgd.py"][1].milestones == (50, 100)
    assert cfgs["sfp/do_sfp.py"][1].milestones == (15, 30, 40)
    resrep = cfgs["rr/exp_resrep.py"][0]
    assert resrep.mask_interval is None and resrep.before_mask_iters is None  # the recipe's step counts
    assert "compare_models" not in text and str(tmp_path / "out") in text
    assert f"total: {(60 + 120 + 150 + 300) * 781 + 50 * 390:,} training steps" in text


REGISTRY_BY_SCRIPT = {m.script: m for m in [*REGISTRY.values(), compare_methods.BASE]}


def test_a_macs_target_or_another_arch_keeps_the_one_target(capsys, tmp_path):
    _, commands = plan([*PAPER, "--macs-target", "0.5"], capsys, tmp_path)
    assert {flag(a, "--macs-target") for s, a in commands.items() if s != "train_base_model.py"} == {"0.5"}
    _, commands = plan(["-a", "src20", "--data", "cifar10", "--baselines", "l1"], capsys, tmp_path)
    assert {flag(a, "--macs-target") for s, a in commands.items() if s != "train_base_model.py"} == {"0.5"}


def test_every_headline_keeps_the_macs_it_says():
    """A headline's `macs` (its row's target) is what its flags make of src56, within the methods' rounding."""
    graph = arch_graph("src56")
    base = count(graph, default_deps("src56"))[0]
    for method in REGISTRY.values():
        for arch, h in method.headlines.items():
            args, _, _ = skeleton.check(method, ["-a", arch, *h.flags], start=False)
            if method.name == "csgd":  # C-SGD's widths are known before training
                deps = args.target_deps
            elif method.name == "sfp":  # so are SFP's, from its rate, every selected group alike
                deps = graph.deps_at(default_deps(arch), {g.id: g.width - num_pruned(g.width, args.rate)
                                                          for g in graph.select(args.groups)})
            else:  # ResRep and AOFP aim at the target itself
                assert float(flag(list(h.flags), "--macs-target")) == h.macs
                continue
            assert count(graph, deps)[0] / base == pytest.approx(h.macs, abs=1e-4), method.name


def test_the_reproduction_table_says_what_has_been_run():
    empty = reproduction.table_rows(headlines(), [])
    assert [r[0] for r in empty] == ["ResRep (ICCV'21)", "C-SGD (CVPR'19)", "AOFP (ICML'19)", "SFP (IJCAI'18)"]
    assert all(r[-1] == "not run" for r in empty)
    run = {"settings": {"arch": "src56", "budget": "paper-quarter", "seeds": [0, 1], "hardware": "an H200"},
           "rows": [{"name": "base", "final_top1": 93.0, "n": 1},
                    {"name": "resrep", "headline": "ResRep (ICCV'21)", "final_top1": 93.21, "final_top1_std": 0.1,
                     "n": 2, "macs_ratio": 0.4677}]}
    full = {**run, "settings": {**run["settings"], "budget": "paper", "seeds": [0]},
            "rows": [run["rows"][0], {**run["rows"][1], "final_top1": 93.81, "final_top1_std": None, "n": 1}]}
    rows = {r[0]: r for r in reproduction.table_rows(headlines(), [run])}
    assert rows["ResRep (ICCV'21)"][4:] == ["93.00 -> 93.21 ± 0.10 (n = 2)", "53.23%", "-0.50",
                                            "paper-quarter, seeds [0, 1], an H200", "partial (a quarter of the epochs)"]
    assert rows["C-SGD (CVPR'19)"][-1] == "not run"
    rows = {r[0]: r for r in reproduction.table_rows(headlines(), [run, full])}  # the full budget wins
    assert rows["ResRep (ICCV'21)"][6] == "+0.10" and rows["ResRep (ICCV'21)"][-1] == "done"
    assert json.dumps(reproduction.markdown(headlines(), [run])).count("not run") == 3


def test_the_reproduction_table_prints_from_the_command_line(tmp_path, capsys):
    assert compare_methods.main(["--reproduction"]) == 0
    assert capsys.readouterr().out.count("| not run |") == 4


def test_the_main_job_prunes_the_shipped_base(capsys, tmp_path):
    """The README's main job (the demo on cifar10-mini) starts every pruning stage from the shipped src20 base."""
    from baselines.plain import SHIPPED
    path = SHIPPED[("src20", "cifar10")]
    if not os.path.isfile(path):
        pytest.skip(f"{path} is not in this checkout")
    text, commands = plan([], capsys, tmp_path)
    assert "base: the shipped src20 base" in text and "train_base_model.py -a src20 -o" not in text
    for script, argv in commands.items():
        if script != "baselines/scratch.py":
            assert not os.path.isabs(flag(argv, "--init")) and os.path.samefile(flag(argv, "--init"), path), script
        assert flag(argv, "--data") == "cifar10-mini"
    assert re.search(r"total: [\d,]+ training steps; H200 time not measured|not measured for this arch", text)


@pytest.mark.parametrize("data", ["cifar10-mini", "synthetic"])
def test_the_plans_image_counts_are_the_data_sets(data):
    """The plan counts steps from TRAIN_IMAGES without loading the data: it must be what the loader holds."""
    from utils.training.data import TRAIN_IMAGES, make_loaders
    train, _ = make_loaders(data, batch_size=64)
    assert train.dataset_size == TRAIN_IMAGES[data]
