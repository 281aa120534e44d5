"""What several test files share: random models with non-trivial BN, small inputs, random widths, two
gloo ranks on the CPU. Imported as `helpers` (pytest.ini puts tests/ on the path)."""
import contextlib

import pytest
import torch
from torch import nn

from base_model import build_model
from base_model.layers import conv_bn

# A run on learnable random images on the CPU (every entry script takes these), and the comparison's smoke budget
SYNTHETIC = ["--data", "synthetic", "--device", "cpu"]
SMOKE_COMPARISON = ["--budget", "smoke", *SYNTHETIC, "--latency-repeats", "1"]
# Small inputs keep the ImageNet nets fast on CPU; global pooling is adaptive.
TEST_INPUT = {"src56": 32, "src20": 32, "sres18": 64, "sres50": 64, "vc": 32}


def randomize_bn(model, size, seed=0):
    """Non-trivial BN statistics and affines, so BN is not the identity in eval mode.

    Running statistics come from one batch of noise, so activations stay O(1) through deep nets
    and the logits are of a trained net's scale; affines are random.
    """
    g = torch.Generator().manual_seed(seed)
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # a cumulative average: one batch sets the statistics
    with torch.no_grad():
        model.train()(torch.randn(8, 3, size, size, generator=g))
        for m in bns:
            m.momentum = 0.1
            m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.copy_(torch.randn(m.num_features, generator=g) * 0.2)
    return model.eval()


def random_model(arch, deps=None, seed=0):
    torch.manual_seed(seed)
    return randomize_bn(build_model(arch, deps), TEST_INPUT[arch], seed)


def example_input(arch, batch=2, seed=1):
    s = TEST_INPUT[arch]
    return torch.randn(batch, 3, s, s, generator=torch.Generator().manual_seed(seed))


def random_deps(graph, rng, low=0.3):
    """Random valid widths: every group gets one width, shared by all its producers."""
    deps = [0] * len(graph.convs)
    for g in graph.groups:
        w = rng.randint(max(1, int(g.width * low)), g.width)
        for p in g.producers:
            deps[p.index] = w
    return deps


def script(method):
    """A method's entry script as the tests call it, without importing the script: main(argv) (returns None, as a
    command's main), parse(argv) (the parsed flags) and run(argv) (the skeleton's Run, or None when not redone)."""
    from types import SimpleNamespace

    from utils.training import skeleton

    def main(argv=None):
        skeleton.run(method, argv)

    return SimpleNamespace(main=main, parse=lambda argv=None: skeleton.parse(method, argv),
                           run=lambda argv=None: skeleton.run(method, argv), method=method)


def exit_code(main, *args):
    """Run main(*args) as its command line does (utils.command.run_main) and return the exit code."""
    from utils.command import run_main

    with pytest.raises(SystemExit) as e:
        run_main(main, *args)
    return e.value.code


def free_port():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def spawn_ranks(worker, *args, world=2):
    """Run worker(rank, world, *args) in `world` processes with torchrun's environment (CPU, env://)."""
    import torch.multiprocessing as mp

    mp.spawn(_as_rank, args=(world, free_port(), worker, args), nprocs=world, join=True)


def _as_rank(rank, world, port, worker, args):
    import os

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    worker(rank, world, *args)
    # Leave without running C++ static destructors: at interpreter exit a rank sometimes aborts ("terminate
    # called without an active exception", SIGABRT) after its work is done and written (seen with emulated bf16).
    import sys

    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


@contextlib.contextmanager
def gloo_group():
    """The process group of a spawned rank (gloo on CPU), torn down on exit."""
    from utils.training import dist

    ctx = dist.setup("cpu")
    try:
        yield ctx
    finally:
        dist.cleanup()


class FlattenNet(nn.Module):
    """A conv map flattened at 3x3 into a linear: 9 columns per channel."""

    def __init__(self, wa=4, wb=5):
        super().__init__()
        self.a = conv_bn(3, wa, 3, relu=True)
        self.b = conv_bn(wa, wb, 3, relu=True)
        self.pool = nn.AvgPool2d(2)
        self.fc = nn.Linear(wb * 9, 2)

    def forward(self, x):
        return self.fc(torch.flatten(self.pool(self.b(self.a(x))), 1))
