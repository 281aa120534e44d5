"""One registry of methods: every method and baseline is one `Method` object, and a new one is a package and one
line; shown here by registering a small extra method (random channel selection) and running it through the
smoke comparison beside a baseline, with the same exact conversion and the same table."""
import json
import os
import random

import pytest
from helpers import SMOKE_COMPARISON

import compare_methods
from baselines.l1_pruning import RECIPES, add_ratio_flags, solve_ratio
from utils import registry
from utils.pruning.flops import uniform_deps
from utils.pruning.plan import Plan
from utils.pruning.surgery import keep
from utils.pruning.zeroing import zero_channels
from utils.training import skeleton
from utils.training.method import Method


def decide(run):
    """Keep a random subset of every pruned group, the uniform widths --ratio asks for (seeded by --seed)."""
    a, graph, model = run.args, run.graph, run.trainer.model
    rng = random.Random(a.seed)
    target = graph.widths(uniform_deps(graph, model.deps, a.groups, a.ratio, a.round_to))
    kept = {g.id: sorted(rng.sample(range(g.width), target[g.id])) for g in graph.select(a.groups)}
    zero_channels(model, graph, {g: sorted(set(range(graph.groups[g].width)) - set(k)) for g, k in kept.items()})
    return Plan({g: keep(k) for g, k in kept.items()}, reference_name="the base with the dropped filters zeroed")


RANDOM = Method(
    "random", "random channels", "tests/test_registry.py", "Random channel selection, one shot.", RECIPES,
    output=lambda args: f"random_models/{args.arch}_train", flags=lambda p: add_ratio_flags(p, "random selection"),
    validate=solve_ratio, decide=decide, fit=False, budgets={"smoke": ["--epochs", "1", "--max-steps", "2"]},
    note=lambda conversion, setting: "random channels: a one-shot random subset of every group, not trained.")


@pytest.fixture
def random_method():
    registry.register(RANDOM)
    yield RANDOM
    registry.unregister(RANDOM.name)


def test_the_registry_holds_the_four_methods_and_three_baselines_in_table_order():
    assert registry.list_methods() == ["resrep", "csgd", "aofp", "sfp"]
    assert registry.list_methods(baselines=True) == ["l1", "scratch", "base+"]
    assert [registry.load(e).name for e in registry.ENTRIES] == list(registry.REGISTRY)
    for method in registry.REGISTRY.values():  # every method's recipe covers both data sets, and its budgets the three
        assert set(method.recipes) == {"cifar10", "imagenet"} and {"smoke", "demo", "study"} <= set(method.budgets)
        assert os.path.isfile(os.path.join(os.path.dirname(os.path.dirname(__file__)), method.script))
    with pytest.raises(ValueError, match="a method named 'sfp' is registered already"):
        registry.register(registry.get_method("sfp"))
    with pytest.raises(ValueError, match="unknown method 'obd'"):
        registry.get_method("obd")


@pytest.mark.slow
def test_an_extra_registered_method_runs_through_the_smoke_comparison(random_method, tmp_path):
    out = tmp_path / "cmp"
    argv = [*SMOKE_COMPARISON, "-o", str(out),
            "--methods", "random", "--baselines", "l1"]
    assert compare_methods.main(argv) == 0
    record = json.load(open(out / "comparison.json"))
    rows = {r["name"]: r for r in record["rows"]}
    assert list(rows) == ["base", "random", "l1"]
    r = rows["random"]
    assert r["exact"] is True and r["logit_diff"] < 1e-4 and abs(r["macs_ratio"] - 0.5) < 0.03
    assert r["macs"] == rows["l1"]["macs"]  # the same uniform widths, other channels
    table = open(out / "comparison.md").read()
    assert "| random channels | 50% |" in table and "random channels: a one-shot random subset" in table
    assert "python tests/test_registry.py -a src20 --init" in table and "--macs-target 0.5" in table
    assert os.path.isfile(out / "random" / "macs0.5-seed0" / "finish_converted.hdf5")


def test_without_registration_the_comparison_does_not_know_it(capsys):
    with pytest.raises(ValueError, match="--methods random: choose from resrep, csgd, aofp, sfp"):
        compare_methods.parse(["--methods", "random"])
    assert skeleton.check(RANDOM, ["-a", "src20", "--ratio", "0.5", "--init", __file__])[0].ratio == 0.5
