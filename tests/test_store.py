import os
import stat

import h5py
import numpy as np
import pytest
import torch

from base_model import build_model, default_deps
from helpers import example_input, random_model
from utils.pruning.channel_graph import arch_graph
from utils.pruning.surgery import fuse_bn_state
from utils.tools.store import WeightFileError, load_hdf5, load_state, model_from_hdf5, read_hdf5, save_hdf5


def test_round_trip_with_deps_and_attrs(tmp_path):
    model = random_model("src20")
    path = tmp_path / "w.hdf5"
    save_hdf5(path, model.state_dict(), deps=model.deps, arch="src20", provenance={"command": "test"})
    state, deps, attrs = read_hdf5(path)
    assert deps == default_deps("src20")
    assert attrs["arch"] == "src20" and attrs["provenance"] == {"command": "test"}
    for k, v in model.state_dict().items():
        assert torch.equal(state[k], v) and state[k].dtype == v.dtype
    with h5py.File(path) as f:  # the original layout: one dataset per key, int64 deps
        assert f["deps"].dtype == np.int64 and "stage1.conv1.conv.weight" in f
    loaded, arch, deps = model_from_hdf5(path)
    x = example_input("src20")
    assert arch == "src20" and torch.equal(loaded(x), model(x))


def test_slash_is_written_as_plus(tmp_path):
    save_hdf5(tmp_path / "s.hdf5", {"a/b.weight": torch.ones(2)})
    with h5py.File(tmp_path / "s.hdf5") as f:
        assert list(f) == ["a+b.weight"]
    assert list(read_hdf5(tmp_path / "s.hdf5")[0]) == ["a/b.weight"]


def test_module_prefix_is_stripped(tmp_path):
    model = build_model("vc")
    save_hdf5(tmp_path / "ddp.hdf5", {f"module.{k}": v for k, v in model.state_dict().items()})
    assert load_hdf5(build_model("vc"), tmp_path / "ddp.hdf5") is None


def test_write_is_atomic(tmp_path):
    path = tmp_path / "w.hdf5"
    save_hdf5(path, {"x": torch.zeros(3)})

    bad = {"x": torch.ones(3), "y": object()}  # fails half-way through the write
    with pytest.raises(Exception):
        save_hdf5(path, bad)
    assert torch.equal(read_hdf5(path)[0]["x"], torch.zeros(3))  # the old file is intact
    assert [p.name for p in tmp_path.iterdir()] == ["w.hdf5"]  # and no temporary is left


def test_written_files_get_the_usual_mode_not_mkstemps_0600(tmp_path):
    old = os.umask(0o022)
    try:
        save_hdf5(tmp_path / "m.hdf5", {"x": torch.zeros(1)})
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(tmp_path / "m.hdf5").st_mode) == 0o644


def test_original_repo_file_loads(tmp_path):
    """A training file exactly as the original repos write it: raw h5py, float32, int64 counters, no attrs."""
    model = random_model("src56")
    path = tmp_path / "finish.hdf5"
    with h5py.File(path, "w") as f:
        for k, v in model.state_dict().items():
            f.create_dataset(k.replace("/", "+"), data=v.numpy())
    fresh = build_model("src56")
    assert load_hdf5(fresh, path) is None
    x = example_input("src56")
    assert torch.equal(fresh.eval()(x), model(x))


def test_original_converted_file_loads(tmp_path):
    """The original converted form: BN folded into conv biases, plus deps; rebuilt from the file alone."""
    deps = default_deps("src56")
    deps[1] = 5
    model = random_model("src56", deps)
    path = tmp_path / "finish_converted.hdf5"
    with h5py.File(path, "w") as f:
        for k, v in fuse_bn_state(model.state_dict(), arch_graph("src56")).items():
            f.create_dataset(k, data=v.numpy().astype(np.float64 if k.endswith("conv.bias") else np.float32))
        f.create_dataset("deps", data=np.array(deps, dtype=np.int64))
    loaded, arch, file_deps = model_from_hdf5(path)
    x = example_input("src56")
    assert (arch, file_deps) == ("src56", deps)
    assert (loaded(x) - model(x)).abs().max() < 1e-4


def test_mismatch_lists_every_problem_in_one_message(tmp_path):
    state = build_model("src20").state_dict()
    state.pop("linear.bias")
    state["extra.weight"] = torch.zeros(1)
    state["stage1.conv1.conv.weight"] = torch.zeros(8, 3, 3, 3)
    with pytest.raises(WeightFileError) as e:
        load_state(build_model("src20"), state, source="w.hdf5")
    msg = str(e.value)
    assert msg.startswith("w.hdf5 do not fit the model:")
    assert "missing from the file: linear.bias" in msg
    assert "unexpected in the file: extra.weight" in msg
    assert "shape mismatch: stage1.conv1.conv.weight (file (8, 3, 3, 3), model (16, 3, 3, 3))" in msg


def test_missing_and_corrupt_files(tmp_path):
    with pytest.raises(WeightFileError, match=r"nope.hdf5: no such file"):
        read_hdf5(tmp_path / "nope.hdf5")
    (tmp_path / "text.hdf5").write_text("not weights")
    with pytest.raises(WeightFileError, match=r"text.hdf5: not an hdf5 file"):
        read_hdf5(tmp_path / "text.hdf5")
    save_hdf5(tmp_path / "ok.hdf5", build_model("src20").state_dict())
    data = (tmp_path / "ok.hdf5").read_bytes()
    (tmp_path / "cut.hdf5").write_bytes(data[: len(data) // 2])
    with pytest.raises(WeightFileError, match=r"cut.hdf5: cannot read it as a weight file .*truncated or corrupt"):
        read_hdf5(tmp_path / "cut.hdf5")


def test_unknown_layout_asks_for_the_arch(tmp_path):
    save_hdf5(tmp_path / "odd.hdf5", {"w": torch.zeros(1)})
    with pytest.raises(WeightFileError, match=r"cannot tell which arch it holds; pass it with -a/--arch"):
        model_from_hdf5(tmp_path / "odd.hdf5")
