"""transform_torchvision.py: torchvision's ResNets and ours give identical logits on the same weights."""
import urllib.error

import h5py
import pytest
import torch
import torchvision

import transform_torchvision as tt
from base_model import build_model
from helpers import exit_code, randomize_bn
from utils.tools.store import load_state, read_hdf5


@pytest.mark.parametrize("depth", [18, 34, 50, 101, 152])
def test_identical_logits_on_random_weights(depth):
    torch.manual_seed(depth)
    tv = randomize_bn(getattr(torchvision.models, f"resnet{depth}")(), 64, seed=depth)
    ours = load_state(build_model(f"sres{depth}"), tt.convert_state(tv.state_dict())).eval()
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        a, b = tv(x), ours(x)
    assert a.abs().max() > 0.1  # not a degenerate net
    assert torch.equal(a, b), (a - b).abs().max()


def test_every_name_is_mapped_as_the_original():
    names = tt.convert_state(torchvision.models.resnet50().state_dict())
    assert "conv1.bn.num_batches_tracked" in names
    assert "stage3.projection.conv.weight" in names and "stage3.projection.bn.running_var" in names
    assert "stage4.block2.conv3.bn.weight" in names and "fc.bias" in names
    assert set(names) == set(build_model("sres50").state_dict())


def test_from_file_writes_hdf5_with_deps(tmp_path, capsys):
    torch.manual_seed(0)
    tv = torchvision.models.resnet18()
    src, out = tmp_path / "r18.pth", tmp_path / "out.hdf5"
    torch.save({"state_dict": {f"module.{k}": v for k, v in tv.state_dict().items()}}, src)
    assert exit_code(tt.main, ["-a", "sres18", "--from", str(src), "-o", str(out)]) == 0
    state, deps, attrs = read_hdf5(out)
    assert attrs["arch"] == "sres18" and len(deps) == 20  # stem, 16 block convs, 3 projections
    assert torch.equal(state["stage2.projection.conv.weight"], tv.layer2[0].downsample[0].weight)
    assert "max |logit difference| against torchvision 0" in capsys.readouterr().out
    with h5py.File(out) as f:  # the original layout: `/`-free names, an int deps dataset
        assert f["deps"].dtype.kind == "i" and "conv1.conv.weight" in f


def test_offline_points_to_from(monkeypatch, tmp_path, capsys):
    def offline(url):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(tt, "fetch", offline)
    assert exit_code(tt.main, ["-o", str(tmp_path / "x.hdf5")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "--from" in err and "resnet50-0676ba61.pth" in err
    assert not (tmp_path / "x.hdf5").exists()


@pytest.mark.parametrize("argv, needle", [
    (["-a", "src56"], "ImageNet ResNets only"),
    (["-a", "sres51"], "sres51"),
    (["--from", "nowhere.pth"], "no such file"),
    (["-a", "sres18", "--weights", "IMAGENET1K_V9"], "IMAGENET1K_V1"),
])
def test_bad_input(argv, needle, capsys):
    assert exit_code(tt.main, argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and needle in err


def test_wrong_depth_file_is_refused(tmp_path, capsys):
    src = tmp_path / "r18.pth"
    torch.save(torchvision.models.resnet18().state_dict(), src)
    assert exit_code(tt.main, ["-a", "sres34", "--from", str(src), "-o", str(tmp_path / "o.hdf5")]) == 2
    assert "missing from the file: stage1.block2" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["mobilenet_v3_small", "efficientnet_b0", "googlenet"])
def test_any_torchvision_cnn_imports_in_its_own_names(name, tmp_path, capsys):
    """-a tv:NAME: the state dict as torchvision names it, deps beside it; the file rebuilds the network, whose
    logits are torchvision's on the same weights."""
    from utils.tools.store import model_from_hdf5

    torch.manual_seed(0)
    kwargs = {"aux_logits": False, "init_weights": True} if name == "googlenet" else {}
    tv = randomize_bn(torchvision.models.get_model(name, **kwargs), 64)
    src, out = tmp_path / f"{name}.pth", tmp_path / f"{name}.hdf5"
    torch.save(tv.state_dict(), src)
    assert exit_code(tt.main, ["-a", f"tv:{name}", "--from", str(src), "-o", str(out)]) == 0
    assert f"max |logit difference| against torchvision's {name} 0 ->" in capsys.readouterr().out
    model, arch, deps = model_from_hdf5(out)
    hidden = [m.out_features for m in tv.modules() if isinstance(m, torch.nn.Linear)][:-1]  # MobileNetV3's 1024
    assert arch == f"tv:{name}" and deps == [m.out_channels for m in tv.modules()
                                             if isinstance(m, torch.nn.Conv2d)] + hidden
    with h5py.File(out) as f:
        assert f["deps"].dtype.kind == "i" and set(f) - {"deps"} == set(tv.state_dict())
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(tv.eval()(x), model.eval()(x))
