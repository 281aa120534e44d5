"""One run skeleton, one result format: every method writes finish.hdf5 and finish_converted.hdf5 with one
attribute layout, the trained file and its decisions give the converted file, one flag vocabulary, and
runs written under the original repos' names still load."""
import os
import shutil

import pytest
import torch
from helpers import SYNTHETIC, random_model, script

from aofp.method import AOFP
from csgd.method import CSGD
from rr.compactor import resrep_model
from rr.convert import convert_state
from rr.method import RESREP
from sfp.method import SFP
from utils.pruning.channel_graph import arch_graph
from utils.pruning.surgery import keep, merge, narrow
from utils.tools.store import load_state, read_hdf5, save_hdf5
from utils.training.skeleton import converted_file

exp_resrep = script(RESREP)
do_csgd = script(CSGD)
do_aofp = script(AOFP)
do_sfp = script(SFP)

SMOKE = ["-a", "src20", *SYNTHETIC, "--epochs", "1", "--batch-size", "32",
         "--deterministic"]
METHODS = {  # each method's flags for a few steps that prune something
    "resrep": (exp_resrep.main, ["--max-steps", "4", "--before-mask-iters", "0", "--mask-interval", "1",
                                 "--begin-granularity", "40", "--flops-target", "0.6"]),
    "csgd": (do_csgd.main, ["-i", "0", "--max-steps", "3", "--ratios", "0.5", "--groups", "internal"]),
    "aofp": (do_aofp.main, ["--max-steps", "40", "--iters-per-half", "1", "--warmup-iters", "0", "--thresh", "1e9",
                            "--flops-target", "0.7", "--skip-finetune"]),
    "sfp": (do_sfp.main, ["--max-steps", "3", "--rate", "0.6", "--groups", "internal"]),
}
CONVERSION_KEYS = {"old_deps", "new_deps", "macs_before", "macs_after", "params_before", "params_after", "macs_ratio",
                   "params_ratio", "macs_base", "params_base", "macs_ratio_to_base", "params_ratio_to_base",
                   "max_logit_diff", "raw_logit_diff", "reference", "trained_metrics", "converted_metrics"}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Every method once, from one base file, each in its own folder."""
    root = tmp_path_factory.mktemp("runs")
    base = root / "base.hdf5"
    model = random_model("src20")
    save_hdf5(base, model.state_dict(), deps=model.deps, arch="src20")
    for name, (main, flags) in METHODS.items():
        main([*SMOKE, "--init", str(base), "-o", str(root / name), *flags])
    return root


@pytest.mark.parametrize("name", list(METHODS))
def test_every_method_writes_the_same_two_files_with_one_attribute_layout(runs, name):
    trained, trained_deps, t = read_hdf5(runs / name / "finish.hdf5")
    converted, deps, c = read_hdf5(runs / name / "finish_converted.hdf5")
    assert set(t) == {"arch", "method", "metrics", "conversion", "decisions", "provenance"}
    assert set(c) == {"arch", "method", "metrics", "conversion", "provenance"}
    assert t["method"] == c["method"] == name and t["arch"] == c["arch"] == "src20"
    conv = c["conversion"]
    assert conv == t["conversion"] and CONVERSION_KEYS <= set(conv)
    assert conv["old_deps"] == trained_deps and conv["new_deps"] == deps and sum(deps) < sum(trained_deps)
    assert t["metrics"] == conv["trained_metrics"] and c["metrics"] == conv["converted_metrics"]
    assert conv["max_logit_diff"] < 1e-4, conv  # every conversion is exact against its reference


@pytest.mark.parametrize("name", list(METHODS))
def test_the_trained_file_and_its_decisions_give_the_converted_file(runs, name):
    """A wrong trained state (AOFP before its zeroing, SFP before its last one) or wrong decisions fail here."""
    trained, trained_deps, attrs = read_hdf5(runs / name / "finish.hdf5")
    converted, deps, _ = read_hdf5(runs / name / "finish_converted.hdf5")
    graph = arch_graph("src20")
    first_conv = {g.producers[0].conv: g.id for g in graph.groups}
    clusters = {first_conv[conv]: c for conv, c in attrs["decisions"].items()}
    if name == "resrep":  # its decisions fold the compactors kept in the trained file
        model, graph, groups = resrep_model("src20")
        load_state(model, trained)
        assert {pg.id: [[i] for i in range(pg.group.width) if i not in pg.masked()] for pg in groups} == clusters
        state, new_deps = convert_state(trained, graph, groups)
    else:
        make = merge if name == "csgd" else lambda c: keep([i for (i,) in c])
        state, new_deps = narrow(trained, graph, {g: make(c) for g, c in clusters.items()})
    assert new_deps == deps and state.keys() == converted.keys()
    for k in state:
        assert torch.allclose(state[k], converted[k], atol=1e-6), k


def test_resrep_records_what_its_reference_leaves_out(runs):
    """Four steps are too few for the masked rows to decay: the trained net as it is differs from the
    converted one, while the reference (masked rows zeroed) does not."""
    conv = read_hdf5(runs / "resrep" / "finish_converted.hdf5")[2]["conversion"]
    assert conv["pruned_row_norm"] > 1e-4 and conv["raw_logit_diff"] > 100 * conv["max_logit_diff"]
    assert conv["reference"] == "the trained net with its masked compactor rows zeroed"


# --- one flag vocabulary ---------------------------------------------------------------------------

@pytest.mark.parametrize("parse, extra", [(exp_resrep.parse, []), (do_csgd.parse, ["-i", "0"]), (do_aofp.parse, []),
                                          (do_sfp.parse, [])])
def test_every_method_takes_init_and_groups(parse, extra):
    args = parse(["-a", "src20", *extra, "--init", "w.hdf5", "--groups", "internal,residual"])
    assert args.init == "w.hdf5" and args.groups == "internal,residual"


def test_the_original_flag_names_stay_as_aliases():
    assert do_aofp.parse(["-a", "vc", "--base", "w.hdf5"]).init == "w.hdf5"
    assert exp_resrep.parse(["-a", "src20", "--roles", "internal"]).groups == "internal"
    assert do_csgd.parse(["-a", "src20", "-i", "0", "--scope", "all"]).groups == "all"


def test_aofp_refuses_groups_and_widths_it_cannot_search(runs, tmp_path):
    for flags, msg in ((["--groups", "output"], "--groups 'output': use 'all' or a comma list of roles"),
                       (["--round-to", "0"], "--round-to 0: must be at least 1")):
        with pytest.raises(ValueError, match=msg):
            do_aofp.main([*SMOKE, "--init", str(runs / "base.hdf5"), "-o", str(tmp_path / "x"), *flags])
    assert not os.path.exists(tmp_path / "x")


# --- files under the original repos' names ---------------------------------------------------------

def test_a_run_written_under_the_old_names_still_counts(runs, tmp_path, capsys):
    """C-SGD wrote pruned.hdf5 and AOFP finish_pruned.hdf5 before the names were unified."""
    itr0 = tmp_path / "m" / "src20_train" / "itr0"
    os.makedirs(itr0)
    shutil.copy(runs / "csgd" / "finish_converted.hdf5", itr0 / "pruned.hdf5")
    assert converted_file(itr0) == str(itr0 / "pruned.hdf5")
    argv = [*SMOKE, "--models-dir", str(tmp_path / "m"), "--max-steps", "2", "--ratios", "0.5,0.25",
            "--groups", "internal"]
    assert do_csgd.run([*argv, "-i", "0"]) is None  # done already
    assert "C-SGD itr0 is already done" in capsys.readouterr().out
    run = do_csgd.run([*argv, "-i", "1"])  # starts from the old file
    assert run.init == str(itr0 / "pruned.hdf5") and run.model.deps == read_hdf5(itr0 / "pruned.hdf5")[1]
    old = tmp_path / "aofp"
    os.makedirs(old)
    shutil.copy(runs / "aofp" / "finish_converted.hdf5", old / "finish_pruned.hdf5")
    assert converted_file(old) == str(old / "finish_pruned.hdf5") and converted_file(tmp_path) is None
