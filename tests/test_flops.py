import json
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import random_deps
from torch.utils.flop_counter import FlopCounterMode

from base_model import ARCHS, build_model, default_deps, get_arch
from utils.pruning.channel_graph import arch_graph
from utils.pruning.flops import count

ROOT = Path(__file__).resolve().parents[1]


def counted_by_torch(arch, deps):
    """MACs by torch.utils.flop_counter (which counts 2 FLOPs per MAC), and the parameter count."""
    size = get_arch(arch).input_size
    with torch.device("meta"):
        model = build_model(arch, deps)
        x = torch.empty(1, 3, size, size)
    with FlopCounterMode(display=False) as counter:
        model(x)
    return counter.get_total_flops() // 2, sum(p.numel() for p in model.parameters())


def test_base_values_from_the_papers():
    assert count(arch_graph("src56"), default_deps("src56")) == (125_747_840, 855_770)
    assert count(arch_graph("sres50"), default_deps("sres50")) == (4_089_184_256, 25_557_032)
    assert count(arch_graph("vc"), default_deps("vc"))[0] == 313_463_808


@pytest.mark.parametrize("arch", list(ARCHS))
def test_agrees_with_torch_flop_counter(arch):
    graph = arch_graph(arch)
    rng = random.Random(arch)
    for deps in (default_deps(arch), random_deps(graph, rng)):
        assert count(graph, deps) == counted_by_torch(arch, deps)


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "utils.pruning.flops", *args], cwd=ROOT, capture_output=True, text=True)


@pytest.mark.slow
def test_cli_json():
    out = run_cli("-a", "src56", "--json")
    assert out.returncode == 0, out.stderr
    info = json.loads(out.stdout)
    assert (info["arch"], info["macs"], info["params"]) == ("src56", 125_747_840, 855_770)
    assert info["deps"] == default_deps("src56")
    deps = default_deps("vc")
    deps[0] = 32
    info = json.loads(run_cli("-a", "vc", "--deps", ",".join(map(str, deps)), "--json").stdout)
    assert info["macs"] == 313_463_808 - 32 * 3 * 9 * 1024 - 32 * 64 * 9 * 1024


@pytest.mark.slow
def test_cli_bad_input():
    out = run_cli("-a", "src56", "--deps", "16,16")
    assert out.returncode == 2 and "deps has 2 entries but must have 57" in out.stderr
    out = run_cli("-a", "nope")
    assert out.returncode == 2 and "unknown arch 'nope'" in out.stderr
    assert "Traceback" not in out.stderr
    out = run_cli("-a", "src56", "--deps", "16,x")
    assert out.returncode == 2 and "Traceback" not in out.stderr


def test_resrep_published_resnet50():
    """ResRep's final ResNet-50 widths (from its released log) keep 45.458 % of the MACs."""
    deps = [64, 256, 22, 22, 256, 23, 36, 256, 1, 1, 256, 512, 62, 97, 512, 16, 49, 512, 38, 68, 512, 41, 92, 512,
            1024, 189, 204, 1024, 69, 145, 1024, 65, 139, 1024, 64, 94, 1024, 67, 89, 1024, 86, 95, 1024,
            2048, 473, 488, 2048, 171, 281, 2048, 511, 512, 2048]
    macs, _ = count(arch_graph("sres50"), deps)
    assert round(macs / 4_089_184_256, 5) == 0.45458
