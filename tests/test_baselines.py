"""The baselines: L1-norm pruning keeps the largest-L1 filters and converts exactly; the narrow net from
scratch has the uniform widths; one ratio is exact in fractions."""
from fractions import Fraction

import pytest
import torch
from helpers import SYNTHETIC, exit_code, random_model, script

from base_model import default_deps
from baselines.from_scratch import SCRATCH
from baselines.l1_pruning import L1
from utils.pruning.channel_graph import arch_graph
from utils.pruning.flops import uniform_deps, uniform_ratio
from utils.tools.store import read_hdf5, save_hdf5

l1, scratch = script(L1), script(SCRATCH)

SMOKE = ["-a", "src20", *SYNTHETIC, "--epochs", "1", "--max-steps", "2"]


def test_uniform_widths_are_exact_fractions_of_the_selected_groups():
    graph, deps = arch_graph("src56"), default_deps("src56")
    half = uniform_deps(graph, deps, "internal", Fraction(29, 100))
    internal = {p.index for g in graph.select("internal") for p in g.producers}
    assert all(half[i] == (4 if deps[i] == 16 else 9 if deps[i] == 32 else 18) for i in internal)  # floor(0.29 w)
    assert all(half[i] == deps[i] for i in range(len(deps)) if i not in internal)
    assert uniform_deps(graph, deps, "all", Fraction(1, 100)) == [1] * len(deps)  # never below one channel
    ratio, chosen = uniform_ratio(graph, deps, "internal", 0.5)
    assert ratio == "0.5" and chosen == uniform_deps(graph, deps, "internal", Fraction(1, 2))


def test_l1_keeps_the_largest_l1_filters_and_converts_exactly(tmp_path):
    model = random_model("src20")
    graph = arch_graph("src20")
    group = graph.select("internal")[0]
    conv = model.get_submodule(group.producers[0].conv)
    with torch.no_grad():  # filters 0..7 small in L1 norm, 8..15 large (144 weights of 0.5: L1 72, L2 6)
        conv.weight[:8] *= 0.01
        conv.weight[8:] = conv.weight[8:].sign() * 0.5
        conv.weight[3, 0, 0, 0] = 10.0  # filter 3: L2 10 (above 6) but L1 about 10 (below 72): L1 drops it
    base = tmp_path / "base.hdf5"
    save_hdf5(base, model.state_dict(), deps=model.deps, arch="src20")
    out = tmp_path / "l1"
    l1.main([*SMOKE, "--init", str(base), "--ratio", "0.5", "-o", str(out)])
    trained, _, attrs = read_hdf5(out / "finish.hdf5")
    converted, deps, conv_attrs = read_hdf5(out / "finish_converted.hdf5")
    assert attrs["decisions"][group.producers[0].conv] == [[i] for i in range(8, 16)]
    assert deps == uniform_deps(graph, model.deps, "internal", Fraction(1, 2))
    assert conv_attrs["conversion"]["max_logit_diff"] < 1e-4 and conv_attrs["method"] == "l1"
    assert torch.count_nonzero(trained[f"{group.producers[0].conv}.weight"][:8]) == 0  # dropped, zeroed
    assert read_hdf5(out / "finetune" / "finish.hdf5")[1] == deps  # the narrow net, fine-tuned


def test_scratch_trains_the_uniform_narrow_net_from_random_weights(tmp_path, capsys):
    out = tmp_path / "scratch"
    scratch.main([*SMOKE, "--macs-target", "0.5", "-o", str(out)])
    _, deps, attrs = read_hdf5(out / "finish.hdf5")
    graph = arch_graph("src20")
    assert deps == uniform_ratio(graph, default_deps("src20"), "internal", 0.5)[1] and "conversion" not in attrs
    assert exit_code(scratch.main, [*SMOKE, "--ratio", "0.5", "--init", "x.hdf5", "-o", str(tmp_path / "y")]) == 2
    assert "starts from random weights" in capsys.readouterr().err


@pytest.mark.parametrize("main", [l1.main, scratch.main])
@pytest.mark.parametrize("flags, needle", [([], "one of them"),
                                           (["--ratio", "0.5", "--macs-target", "0.5"], "one of them"),
                                           (["--ratio", "1.5"], "must be in (0, 1]"),
                                           (["--macs-target", "1.5"],
                                            "--macs-target 1.5: the fraction of the MACs to keep must be in (0, 1]")])
def test_bad_input(main, flags, needle, tmp_path, capsys):
    assert exit_code(main, [*SMOKE, *flags, "-o", str(tmp_path / "x")]) == 2
    assert needle in capsys.readouterr().err and not (tmp_path / "x").exists()
