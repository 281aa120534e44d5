"""Your own network (utils/custom.py): a method runs on an nn.Module and tensors of your own, through the
same skeleton, and ends with a narrow network of your class, proven exact; and the example script runs."""
import importlib.util
import os

import pytest
import torch
from torch import nn

from helpers import randomize_bn
from utils.tools.store import model_from_hdf5
from utils.custom import prune, register

EXAMPLE = os.path.join(os.path.dirname(__file__), "..", "docs", "examples", "prune_custom_net.py")


def example():
    spec = importlib.util.spec_from_file_location("prune_custom_net", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def data(n, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, 16, 16, generator=g), torch.randint(0, 10, (n,), generator=g)


@pytest.mark.parametrize("method,flags", [
    ("l1", ["--macs-target", "0.5"]),
    ("resrep", ["--macs-target", "0.5", "--before-mask-iters", "0", "--mask-interval", "1",
                "--begin-granularity", "1000"]),
    ("sfp", ["--rate", "0.5"]),
])
def test_a_method_prunes_your_network_into_your_class_exactly(method, flags, tmp_path):
    torch.manual_seed(0)
    net = randomize_bn(example().TinyNet(), 16)
    run = prune(method, net, data(64, 0), data(32, 1), ["--epochs", "1", "--max-steps", "3", "--batch-size", "16",
                                                        *flags], str(tmp_path / method))
    small, info = run.conversion.model, run.conversion.info
    assert type(small).__name__ == "TinyNet" and small.depthwise[0].groups == small.depthwise[0].out_channels
    assert info["new_deps"] != info["old_deps"]
    # the converted file reloads (once the network is registered in this process) as the network it proved
    reloaded, arch, deps = model_from_hdf5(tmp_path / method / "finish_converted.hdf5")
    assert arch == "custom:net" and deps == run.conversion.deps and type(reloaded) is type(small)
    state = reloaded.state_dict()
    assert all(torch.equal(state[k], v) for k, v in run.conversion.state.items())
    x = data(4, 2)[0]
    with torch.no_grad():
        scale = reloaded.eval()(x).abs().max().item()
    assert info["max_logit_diff"] < 1e-4 * scale


def test_bad_input_is_named(tmp_path):
    net = example().TinyNet()
    with pytest.raises(ValueError, match=r"labels must be in 0..9"):
        register(net, (torch.randn(4, 3, 16, 16), torch.tensor([0, 1, 2, 10])), data(4, 1))
    with pytest.raises(ValueError, match=r"give \(images, labels\)"):
        register(net, torch.randn(4, 3, 16, 16), data(4, 1))
    with pytest.raises(ValueError, match=r"recipe 'mnist'"):
        register(net, data(4, 0), data(4, 1), recipe="mnist")

    class Unfollowable(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.bn, self.fc = nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.Linear(8, 10)

        def forward(self, x):
            return self.fc(self.bn(self.conv(x)).amax((2, 3)))

    with pytest.raises(ValueError, match=r"unsupported op call_method amax at node 'amax'"):
        prune("l1", Unfollowable(), data(16, 0), data(8, 1), ["--macs-target", "0.5"], str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_the_example_script_runs(tmp_path, capsys, monkeypatch):
    """docs/examples/prune_custom_net.py on the embedded CIFAR-10 images, one step of each stage."""
    module = example()
    monkeypatch.setattr(module, "prune", lambda m, net, tr, va, flags, out: prune(
        m, net, (tr[0][:256], tr[1][:256]), (va[0][:256], va[1][:256]), [*flags, "--max-steps", "2"], out))
    module.main(["--epochs", "1", "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert "resrep: TinyNet with deps" in out and "l1: TinyNet with deps" in out
