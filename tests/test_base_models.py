import pytest
import torch
from torch import nn

from base_model import ARCHS, DepsError, build_model, default_deps, get_arch

CONV_COUNTS = {"src20": 21, "src32": 33, "src56": 57, "src110": 111, "sres18": 20, "sres34": 36,
               "sres50": 53, "sres101": 104, "sres152": 155, "vc": 13}


def convs_of(model):
    return [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]


@pytest.mark.parametrize("arch", list(ARCHS))
def test_deps_order_is_state_dict_order(arch):
    with torch.device("meta"):
        model = build_model(arch)
    convs = convs_of(model)
    assert len(convs) == len(default_deps(arch)) == CONV_COUNTS[arch]
    kernels = [k[:-len(".weight")] for k, v in model.state_dict().items() if v.dim() == 4]
    assert kernels == convs
    assert [c[:-len(".conv")] for c in convs] == get_arch(arch).deps_names()
    widths = [model.get_submodule(c).out_channels for c in convs]
    assert widths == default_deps(arch)


def test_original_names_and_sizes():
    src56 = build_model("src56")
    keys = src56.state_dict().keys()
    for k in ("stage1.conv1.conv.weight", "stage2.projection.conv.weight", "stage2.projection.bn.running_var",
              "stage3.block8.conv2.bn.bias", "linear.weight"):
        assert k in keys
    assert sum(p.numel() for p in src56.parameters()) == 855_770
    assert src56.stage2.projection.conv.kernel_size == (1, 1) and src56.stage2.projection.conv.stride == (2, 2)
    assert src56.stage2.block0.conv1.conv.stride == (2, 2)
    with torch.device("meta"):
        sres50 = build_model("sres50")
    assert sum(p.numel() for p in sres50.parameters()) == 25_557_032
    assert sres50.stage2.block0.conv2.conv.stride == (2, 2)  # v1.5: the stride is on the 3x3
    assert sres50.stage2.block0.conv1.conv.stride == (1, 1)
    assert "stage1.projection.conv.weight" in sres50.state_dict()
    vc = build_model("vc")
    names = [n for n, _ in vc.named_modules()]
    assert [n for n in names if "maxpool" in n] == [f"stem.maxpool{i}" for i in range(1, 6)]
    assert names.index("stem.maxpool1") == names.index("stem.conv2") + 4  # conv2, its conv/bn/relu, then the pool
    assert vc.linear1.in_features == 512 and vc.linear1.out_features == 512 and vc.linear2.out_features == 10


@pytest.mark.parametrize("arch,size", [("src56", 40), ("sres18", 96), ("vc", 32)])
def test_forward_any_input_size(arch, size):
    model = build_model(arch, num_classes=7).eval()
    assert model(torch.randn(2, 3, size, size)).shape == (2, 7)


def test_narrow_deps_build():
    deps = default_deps("sres50")
    deps[2], deps[3] = 10, 20  # stage1.block0 conv1 and conv2 are internal
    model = build_model("sres50", deps)
    assert model.stage1.block0.conv2.conv.weight.shape == (20, 10, 3, 3)
    assert model.stage1.block0.conv3.conv.weight.shape[1] == 20
    assert model(torch.randn(1, 3, 64, 64)).shape == (1, 1000)


def test_wrong_length_is_refused():
    with pytest.raises(DepsError, match=r"src56: deps has 56 entries but must have 57"):
        build_model("src56", default_deps("src56")[:-1])


def test_broken_residual_tie_is_refused():
    deps = default_deps("src56")
    deps[2] = 15  # stage1.block0.conv2 is added to stage1's stream
    with pytest.raises(DepsError, match=r"deps\[2\] \(stage1.block0.conv2\) is 15 but must equal deps\[0\] \(stage1.conv1\) = 16"):
        build_model("src56", deps)
    deps = default_deps("sres50")
    deps[1] = 200  # the stage-1 projection, tied to every conv3 of stage 1
    with pytest.raises(DepsError, match=r"deps\[4\] \(stage1.block0.conv3\) is 256 but must equal deps\[1\] \(stage1.projection\) = 200"):
        build_model("sres50", deps)
    deps = default_deps("sres18")
    deps[0] = 32  # sres18's stage 1 has no projection: its blocks add to the stem's stream
    with pytest.raises(DepsError, match=r"must equal deps\[0\] \(conv1\) = 32"):
        build_model("sres18", deps)


def test_bad_width_and_unknown_arch():
    deps = default_deps("vc")
    deps[5] = 0
    with pytest.raises(DepsError, match=r"deps\[5\] \(stem.conv6\) is 0; every width must be a positive integer"):
        build_model("vc", deps)
    with pytest.raises(ValueError, match=r"unknown arch 'resnet56'; choose one of: src20, .*vc"):
        build_model("resnet56")
