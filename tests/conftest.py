"""What every test file may ask for: the engine's two precision settings, and the `slow` marker.

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
