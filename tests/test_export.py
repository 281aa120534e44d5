"""ONNX export: the BN-fused narrow network in ONNX Runtime gives PyTorch's logits, at any batch size."""
import os
import random

import onnx
import pytest
import torch

from helpers import example_input, exit_code, random_deps, random_model
from utils.pruning.channel_graph import arch_graph
from utils.tools import export
from utils.tools.store import save_hdf5


@pytest.mark.parametrize("arch", ["src20", "vc"])
def test_onnx_of_a_narrow_net_round_trips(arch, tmp_path):
    deps = random_deps(arch_graph(arch), random.Random(0), low=0.3)
    model = random_model(arch, deps)
    path = tmp_path / f"{arch}.onnx"
    fused = export.export_onnx(model, arch, path)
    graph = onnx.load(str(path)).graph
    assert not any(n.op_type == "BatchNormalization" for n in graph.node)  # BN folded into the convs
    assert sum(n.op_type == "Conv" for n in graph.node) == len(deps)
    session = export.onnx_session(path)
    for batch in (1, 3):  # the batch dimension is dynamic
        x = example_input(arch, batch=batch)
        with torch.no_grad():
            want = model.eval()(x)  # the conv+BN model, not only the fused copy
        got = torch.from_numpy(session.run([export.OUTPUT], {export.INPUT: x.numpy()})[0])
        assert got.shape == want.shape and want.abs().max() > 1e-2
        assert (got - want).abs().max().item() < 1e-4
    assert export.check_onnx(path, fused, example_input(arch, batch=2)) < 1e-4
    assert not [f for f in os.listdir(tmp_path) if f.endswith(".tmp")]  # written atomically


def test_the_command_exports_any_hdf5(tmp_path, capsys):
    deps = [16, 8, 16, 5, 16, 12, 16, 32, 9, 32, 30, 32, 16, 32, 64, 20, 64, 33, 64, 1, 64]
    model = random_model("src20", deps)
    save_hdf5(tmp_path / "narrow.hdf5", model.state_dict(), deps=deps, arch="src20")
    assert exit_code(export.main, [str(tmp_path / "narrow.hdf5")]) == 0
    out = capsys.readouterr().out
    assert os.path.isfile(tmp_path / "narrow.onnx") and "BN fused" in out
    diff = float(out.rsplit("random images: ", 1)[1])
    assert diff < 1e-4
    assert exit_code(export.main, [str(tmp_path / "missing.hdf5")]) == 2
    assert "no such file" in capsys.readouterr().err
