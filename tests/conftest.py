"""What every test file may ask for: the engine's two precision settings, a base model file, and the `slow` marker.

`precision` runs a test twice: as on a CPU without native bf16 (the engine trains in fp32 by default) and as on
one with it (bf16 autocast by default), whatever this machine's CPU is (utils.training.engine.NATIVE_BF16_ENV; on
an AVX2-only CPU bf16 is emulated: slower, the same code path). A test that compares numbers after training
steps asks for it and states the tolerance each setting needs.
"""
import pytest

from utils.training.engine import NATIVE_BF16_ENV


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: takes more than a few seconds; `pytest -m 'not slow'` leaves it out")


@pytest.fixture(params=["fp32", "bf16"])
def precision(request, monkeypatch):
    """'fp32' or 'bf16': the engine's default precision for this run of the test (spawned ranks and
    subprocesses inherit it through the environment)."""
    monkeypatch.setenv(NATIVE_BF16_ENV, "1" if request.param == "bf16" else "0")
    return request.param


def write_base(path, model):
    from utils.tools.store import save_hdf5

    save_hdf5(path, model.state_dict(), deps=model.deps, arch="src20")
    return str(path)


@pytest.fixture(scope="session")
def base_file(tmp_path_factory):
    """A src20 base model as an hdf5 file (random weights, non-trivial BN statistics and affines), read-only: what
    the tests start a method from with --init."""
    from helpers import random_model

    return write_base(tmp_path_factory.mktemp("base") / "src20.hdf5", random_model("src20"))


@pytest.fixture(scope="session")
def fresh_base_file(tmp_path_factory):
    """A src20 as PyTorch initialises it (BN the identity, seed 0), as an hdf5 file: a start whose BN weights are
    all alike, so C-SGD's clusters can collapse within a few steps."""
    import torch

    from base_model import build_model

    torch.manual_seed(0)
    return write_base(tmp_path_factory.mktemp("fresh") / "src20.hdf5", build_model("src20"))
