"""torchvision's CNNs (`tv:NAME@SIZE`): the channel graph of each family, MACs against torch.utils.flop_counter,
every kind of decision converted exactly, each method's entry script end to end, and the refusals.

Small inputs (32 pixels; Inception-V3 needs 80) and random weights with non-trivial BN keep them fast; the
networks torchvision builds slowly (hundreds of MB of random weights) are marked slow."""
import copy
import random
from collections import Counter

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from base_model import build_model, default_deps, get_arch
from helpers import SYNTHETIC, randomize_bn, script
from rr.compactor import insert_compactors, resrep_model
from rr.convert import convert_state, zero_masked_rows
from utils.pruning.channel_graph import UnsupportedOpError, arch_graph
from utils.pruning.conv_groups import first_per_run, runs
from utils.pruning.flops import count, uniform_deps
from utils.pruning.proof import max_logit_diff
from utils.pruning.surgery import collapse, keep, merge, narrow
from utils.pruning.zeroing import zero_channels
from utils.registry import get_method, list_methods
from utils.tools.store import model_from_hdf5, read_hdf5, save_hdf5
from utils.training.data import make_loaders
from utils.training.method import budget_flags

slow = pytest.mark.slow
# one network per family (and the op it brings), at a small input
NETS = [
    "tv:resnet18@32",  # BN outside nn.Sequential (ResRep's hooked compactors)
    pytest.param("tv:wide_resnet50_2@32", marks=slow),
    pytest.param("tv:resnext50_32x4d@32", marks=slow),  # grouped convs
    pytest.param("tv:vgg11_bn@32", marks=slow),  # a linear after flatten of a 7x7 map
    "tv:mobilenet_v2@32",  # depthwise convs, ReLU6
    "tv:mobilenet_v3_small@32",  # squeeze-excite with Hardsigmoid, Hardswish, a hidden linear
    "tv:mnasnet0_5@32",  # a global mean
    "tv:efficientnet_b0@32",  # SiLU, squeeze-excite with Sigmoid, stochastic depth
    pytest.param("tv:efficientnet_v2_s@32", marks=slow),  # fused MBConv
    "tv:regnet_y_400mf@32",  # grouped convs and squeeze-excite
    pytest.param("tv:regnet_x_400mf@32", marks=slow),
    "tv:googlenet@32",  # concatenation
    "tv:densenet121@32",  # pre-activation BN on a concatenation
    pytest.param("tv:inception_v3@80", marks=slow),
    "tv:squeezenet1_1@32",  # no BN: convs with bias
]
REFUSED = {
    "tv:shufflenet_v2_x0_5@32": r"unsupported op call_method size at node 'size' in module 'stage2.0'",
    "tv:convnext_tiny@32": r"ConvNeXt normalises with LayerNorm2d \('features.0.1'\), not BatchNorm",
    "tv:vit_b_16": r"VisionTransformer normalises with LayerNorm",
}


def size_of(arch):
    return get_arch(arch).input_size


def random_net(arch, deps=None, seed=0):
    torch.manual_seed(seed)
    return randomize_bn(build_model(arch, deps), size_of(arch), seed)


def images(arch, n=4, seed=1):
    s = size_of(arch)
    return torch.randn(n, 3, s, s, generator=torch.Generator().manual_seed(seed))


def logit_scale(model, x):
    with torch.no_grad():
        return model.eval()(x).abs().max().item()


def assert_exact(a, b, x, what):
    diff, scale = max_logit_diff(a, b, [x]), logit_scale(a, x)
    assert diff < 1e-4 * scale, f"{what}: max logit difference {diff:.3g} at logit scale {scale:.3g}"


def meta_macs(arch, deps=None):
    """torch.utils.flop_counter's MACs of a forward pass (on the meta device: nothing computed)."""
    with torch.device("meta"):
        model = build_model(arch, deps).eval()
        x = torch.empty(1, 3, size_of(arch), size_of(arch))
    with FlopCounterMode(display=False) as counter:
        model(x)
    return counter.get_total_flops() // 2


@pytest.mark.parametrize("arch", NETS)
def test_macs_are_the_flop_counters_at_full_and_half_width(arch):
    graph = arch_graph(arch)
    full = default_deps(arch)
    half = uniform_deps(graph, full, "all", 0.5)
    assert half != full
    assert count(graph, full)[0] == meta_macs(arch)
    assert count(graph, half)[0] == meta_macs(arch, half)


def test_the_groups_of_each_family():
    """What the graph finds: depthwise convs follow their group, gates are followers, grouped convs are kept."""
    mv2 = arch_graph("tv:mobilenet_v2@32")
    assert Counter(g.role for g in mv2.groups) == {"internal": 20, "residual": 5}
    expand = mv2.group_of("features.2.conv.0.0")
    assert [(p.conv, p.bn) for p in expand.followers] == [("features.2.conv.1.0", "features.2.conv.1.1")]
    assert [c.module for c in expand.consumers] == ["features.2.conv.2"]
    mv3 = arch_graph("tv:mobilenet_v3_small@32")
    gated = mv3.group_of("features.4.block.0.0")
    assert [p.conv for p in gated.followers] == ["features.4.block.1.0", "features.4.block.2.fc2"]
    assert gated.role == "internal"  # the squeeze conv fc1 reads it but does not make it a fanout
    assert [c.module for c in gated.consumers] == ["features.4.block.2.fc1", "features.4.block.3.0"]
    assert mv3.group_of("features.4.block.2.fc1").role == "internal"  # the squeeze width, a group of its own
    rx = arch_graph("tv:resnext50_32x4d@32")
    assert Counter(g.role for g in rx.groups) == {"stem": 1, "internal": 16, "residual": 4}
    g = rx.group_of("layer1.0.conv1")
    assert (g.role, g.conv_groups, g.width) == ("internal", 32, 128)
    assert [(p.conv, p.groups) for p in g.followers] == [("layer1.0.conv2", 32)]
    assert [c.module for c in g.consumers] == ["layer1.0.conv3"]
    dense = arch_graph("tv:densenet121@32")
    assert Counter(g.role for g in dense.groups) == {"preact": 62, "internal": 58}
    bottleneck = dense.group_of("features.denseblock1.denselayer2.conv1")  # conv1 -> norm2 -> conv2: prunable
    assert bottleneck.role == "internal" and [c.module for c in bottleneck.consumers] == \
        ["features.denseblock1.denselayer2.conv2"]
    growth = dense.group_of("features.denseblock1.denselayer1.conv2")  # read by every later layer's norm1
    assert growth.role == "preact" and len(growth.consumers) == 5 + 1  # 5 later layers' conv1, the transition
    norm1 = next(n for n in dense.norms if n.module == "features.denseblock1.denselayer2.norm1")
    assert norm1.in_parts == (dense.group_of("features.conv0").id, growth.id)
    goog = arch_graph("tv:googlenet@32")
    b1 = goog.group_of("inception3a.branch1.conv")
    reader = next(c for c in b1.consumers if c.module == "inception3b.branch1.conv")
    assert [gid for gid, _ in reader.parts] == [goog.group_of(f"inception3a.{b}.conv").id for b in
                                                ("branch1", "branch2.1", "branch3.1", "branch4.1")]


def test_hidden_linear_widths_are_groups_of_their_own():
    """The hidden layers of VGG's and MobileNetV3's classifiers are prunable groups (the next linear reads one
    column per unit), listed in deps after the convs; the last linear, the classifier, is not. The widths in
    deps rebuild the narrow net."""
    arch = "tv:mobilenet_v3_small@32"
    graph = arch_graph(arch)
    assert graph.convs[-2:] == ["features.12.0", "classifier.0"] and len(default_deps(arch)) == 52 + 1
    hidden = graph.group_of("classifier.0")
    assert (hidden.role, hidden.width, [c.module for c in hidden.consumers]) == ("internal", 1024, ["classifier.3"])
    model = build_model(arch, graph.deps_at(default_deps(arch), {hidden.id: 100}))
    assert (model.classifier[0].out_features, model.classifier[3].in_features) == (100, 100)
    vgg = arch_graph("tv:vgg11_bn@32")
    assert [(vgg.group_of(n).role, vgg.group_of(n).width) for n in ("classifier.0", "classifier.3")] == \
        [("internal", 4096), ("internal", 4096)]
    assert vgg.convs[-2:] == ["classifier.0", "classifier.3"] and "classifier.6" not in vgg.convs


def test_densenet_deploys_and_exports_with_its_pre_activation_bns(tmp_path):
    """The deploy form folds each conv's own BN and keeps the pre-activation BNs (nothing to fold them into);
    deploying it again changes nothing (it once refolded the gone BNs: a KeyError), and it exports to ONNX."""
    from utils.tools.deploy import deploy_form
    from utils.tools.export import export_onnx

    arch = "tv:densenet121@32"
    graph = arch_graph(arch)
    model, x = random_net(arch, uniform_deps(graph, default_deps(arch), "internal", 0.5)), images(arch)
    fused = deploy_form(model, arch)
    again = deploy_form(fused, arch)
    assert isinstance(fused.features.denseblock1.denselayer1.norm1, nn.BatchNorm2d)
    assert isinstance(fused.features.denseblock1.denselayer1.norm2, nn.Identity)
    assert_exact(model, again, x, "deploy form")
    export_onnx(fused, arch, str(tmp_path / "densenet.onnx"))
    assert (tmp_path / "densenet.onnx").stat().st_size > 0


@pytest.mark.parametrize("arch,message", REFUSED.items())
def test_what_the_graph_cannot_follow_is_refused_in_one_line(arch, message):
    with pytest.raises(UnsupportedOpError, match=message) as e:
        arch_graph(arch)
    assert "\n" not in str(e.value)


def test_a_grouped_conv_keeps_as_many_channels_in_each_conv_group():
    """RegNetY-400MF's first block: conv a (48 channels) -> grouped conv b (6 conv groups of 8) -> SE -> conv c.
    A decision keeping the same count in every run of 8 channels narrows b into 6 conv groups again, exactly;
    an uneven one, or a cluster across runs (their rows read different inputs), is refused."""
    arch = "tv:regnet_y_400mf@32"
    model, graph, x = random_net(arch).double(), arch_graph(arch), images(arch).double()
    g = graph.group_of("trunk_output.block1.block1-0.f.a.0")
    assert (g.width, g.conv_groups, [(p.conv, p.groups) for p in g.followers]) == \
        (48, 6, [("trunk_output.block1.block1-0.f.b.0", 6), ("trunk_output.block1.block1-0.f.se.fc2", 1)])
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    kept = [i for i in range(48) if i % 8 in (1, 4, 6)]  # 3 of every 8
    narrow_state, deps = narrow(state, graph, {g.id: keep(kept)})
    small = build_model(arch, deps).double()
    small.load_state_dict(narrow_state)
    b = small.get_submodule("trunk_output.block1.block1-0.f.b.0")
    assert (b.in_channels, b.out_channels, b.groups) == (18, 18, 6)
    zeroed = copy.deepcopy(model)
    zero_channels(zeroed, graph, {g.id: sorted(set(range(48)) - set(kept))})
    assert_exact(zeroed, small, x, "keep 3 of every 8")
    clusters = [[i, i + 1] for i in range(0, 48, 2)]  # pairs inside runs: 4 clusters per run
    averaged = copy.deepcopy(model)
    averaged.load_state_dict(collapse(state, graph, {g.id: merge(clusters)}))
    narrow_state, deps = narrow(state, graph, {g.id: merge(clusters)})
    merged = build_model(arch, deps).double()
    merged.load_state_dict(narrow_state)
    assert_exact(averaged, merged, x, "merge pairs")
    with pytest.raises(ValueError, match=r"read by the grouped conv trunk_output.block1.block1-0.f.b.0 \(6 conv "
                                         r"groups\): it keeps \[8, 8, 8, 0, 0, 0\] channels"):
        narrow(state, graph, {g.id: keep(range(24))})
    with pytest.raises(ValueError, match=r"cluster \[7, 8\] spans conv groups \[0, 1\]"):
        narrow(state, graph, {g.id: merge([[7, 8], *[[i] for i in range(48) if i not in (7, 8)]])})
    with pytest.raises(ValueError, match=r"must be a multiple of 6"):
        build_model(arch, graph.deps_at(default_deps(arch), {g.id: 47}))


def test_a_group_read_by_a_pre_activation_bn_is_not_narrowed():
    """Dropping a channel that DenseNet's norm1 reads is not exact: the BN turns its 0 into its bias, which the
    next conv reads. The graph keeps such groups (role preact), the surgery and the deps check refuse them."""
    arch = "tv:densenet121@32"
    model, graph, x = random_net(arch), arch_graph(arch), images(arch)
    growth = graph.group_of("features.denseblock1.denselayer1.conv2")
    zeroed = copy.deepcopy(model)
    zero_channels(zeroed, graph, {growth.id: [0]})
    with torch.no_grad():  # the zeroed channel's 0 reaches norm1 of the next layer, which does not output 0
        features = zeroed.features[:4](x)
        layer1 = zeroed.features.denseblock1.denselayer1([features])
        assert layer1[:, 0].abs().max() == 0
        after = zeroed.features.denseblock1.denselayer2.norm1(torch.cat([features, layer1], 1))
        assert after[:, features.shape[1]].abs().min() > 0
    state = dict(model.state_dict())
    with pytest.raises(ValueError, match=r"read by a pre-activation BatchNorm .* narrowing it is not supported"):
        narrow(state, graph, {growth.id: keep(range(1, growth.width))})
    deps = graph.deps_at(default_deps(arch), {growth.id: growth.width - 1})
    with pytest.raises(ValueError, match=r"are read by a pre-activation BatchNorm, so it must stay 32"):
        build_model(arch, deps)


@pytest.mark.parametrize("arch", NETS)
def test_every_kind_of_decision_converts_exactly(arch):
    """keep (L1, SFP, AOFP: against the net with the dropped channels zeroed in every row, followers too), merge
    (C-SGD: against the net with every cluster averaged) and fold (ResRep: random compactors, half their rows
    masked, against the net with those rows zeroed): the narrow torchvision module computes the same logits.
    In float64, so that 50 layers of random BN and compactors do not turn float32 round-off into 1e-4 of the
    logits (the fold measured 2e-4 in float32, 4e-13 in float64); a wrong row or column gives 1e-2 and more."""
    model, graph, x = random_net(arch).double(), arch_graph(arch), images(arch).double()
    rng = random.Random(0)
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    groups = graph.select("all")
    assert groups

    kept = {g.id: random_keep(g, rng) for g in groups}
    narrow_state, deps = narrow(state, graph, {gid: keep(k) for gid, k in kept.items()})
    small = build_model(arch, deps).double()
    small.load_state_dict(narrow_state)
    zeroed = copy.deepcopy(model)
    zero_channels(zeroed, graph, {gid: sorted(set(range(graph.groups[gid].width)) - set(k)) for gid, k in kept.items()})
    assert_exact(zeroed, small, x, "keep")
    assert count(graph, deps)[0] < count(graph, default_deps(arch))[0]

    clusters = {}
    for g in groups:  # random clusters, inside each conv group's run where a grouped conv reads the group
        clusters[g.id] = merge([c for run in runs(g) for order in [rng.sample(list(run), len(run))]
                                for k in [max(1, len(run) // 3)] for c in (order[i::k] for i in range(k))])
    averaged = copy.deepcopy(model)
    averaged.load_state_dict(collapse(state, graph, clusters))
    narrow_state, deps = narrow(state, graph, clusters)
    merged = build_model(arch, deps).double()
    merged.load_state_dict(narrow_state)
    assert_exact(averaged, merged, x, "merge")

    resrep = copy.deepcopy(model)
    try:
        pruned = insert_compactors(resrep, graph, "all")
    except ValueError as e:  # a network without BN has nowhere to fold a compactor
        assert "no such channel group with a conv+BN" in str(e) and not any(
            isinstance(m, nn.BatchNorm2d) for m in model.modules())
        return
    with torch.no_grad():
        for pg in pruned:
            pg.set_masked(sorted(set(range(pg.group.width)) - set(random_keep(pg.group, rng))))
            for comp in pg.compactors():
                comp.pwc.weight.add_(torch.randn_like(comp.pwc.weight) * 0.1)
    narrow_state, deps = convert_state(resrep.state_dict(), graph, pruned)
    folded = build_model(arch, deps).double()
    folded.load_state_dict(narrow_state)
    assert_exact(zero_masked_rows(resrep, pruned), folded, x, "fold")


def random_keep(group, rng):
    """Half the group's channels at random (as many from each conv group's run where a grouped conv reads it)."""
    count = max(group.conv_groups, group.width // 2 // group.conv_groups * group.conv_groups)
    return sorted(first_per_run(rng.sample(range(group.width), group.width), count, group))


# --- each method's entry script, end to end -------------------------------------------------------------------
TARGETED = {"l1": ["--macs-target", "0.5"], "scratch": ["--macs-target", "0.5"]}
# each method's script: ResNet-18 and MobileNetV2 in every run, the other families marked slow (4 to 20 s a run).
# Not here, with the decision test above only: VGG-11-BN and Wide-ResNet-50-2 (130 M and 69 M parameters, written
# several times a run; not timed alone), and EfficientNetV2-S, where ResRep's fold, exact in float64 (1.5e-5 at a logit
# scale of 2,026), is 0.3 % off once its weights are stored in float32: a random net with random BN is that
# ill-conditioned (the other five methods pass on it, run by hand on 2026-12-06).
SCRIPT_NETS = ["tv:mobilenet_v2@32", "tv:resnet18@32",
               *(pytest.param(arch, marks=slow) for arch in (
                   "tv:mobilenet_v3_small@32", "tv:efficientnet_b0@32", "tv:mnasnet0_5@32", "tv:regnet_y_400mf@32",
                   "tv:googlenet@32", "tv:densenet121@32", "tv:resnext50_32x4d@32", "tv:regnet_x_400mf@32",
                   "tv:inception_v3@80"))]


@pytest.fixture(scope="module")
def tv_bases(tmp_path_factory):
    """arch -> an hdf5 base (random weights, non-trivial BN), made once per network."""
    folder, made = tmp_path_factory.mktemp("tv_bases"), {}

    def base(arch):
        if arch not in made:
            model = random_net(arch)
            made[arch] = str(folder / f"{arch.replace(':', '_')}.hdf5")
            save_hdf5(made[arch], model.state_dict(), deps=model.deps, arch=arch)
        return made[arch]
    return base


@pytest.mark.parametrize("arch", SCRIPT_NETS)
@pytest.mark.parametrize("name", [*list_methods(), "l1", "scratch"])
def test_each_method_prunes_the_network_and_converts_exactly(name, arch, tv_bases, tmp_path):
    """A few steps at lr 1e-4: random networks with random BN diverge within three steps at 0.01 on some CPUs'
    thread schedules (logits of 1e10, NaN), and a diverged net proves nothing; the steps are there to make each
    method's decision, not to learn."""
    method = get_method(name)
    init = [] if name == "scratch" else ["--init", tv_bases(arch)]
    out = tmp_path / name
    flags = ["-a", arch, *init, *SYNTHETIC, *budget_flags(method, "smoke", "imagenet"), "--batch-size", "8",
             "--lr", "1e-4", *TARGETED.get(name, []), "-o", str(out)]
    if name == "resrep":  # a few hundred rows masked in three steps
        flags += ["--begin-granularity", "100"]
    script(method).main(flags)
    if name == "scratch":  # the narrow network trained from random weights: nothing converted
        assert model_from_hdf5(out / "finish.hdf5")[2] != default_deps(arch)
        return
    converted, arch_read, deps = model_from_hdf5(out / "finish_converted.hdf5")
    assert arch_read == arch and deps != default_deps(arch)
    narrowed = [g for g in arch_graph(arch).groups if deps[g.producers[0].index] < g.width]
    if any(g.conv_groups > 1 for g in arch_graph(arch).groups):  # the groups a grouped conv reads are pruned too
        assert any(g.conv_groups > 1 for g in narrowed), [g.producers[0].conv for g in narrowed]
    if "mobilenet_v3" in arch and name != "resrep":  # its hidden linear (ResRep: no BN to fold a compactor into)
        assert "classifier.0" in [g.producers[0].conv for g in narrowed]
    # The proof again, from the two files, in float64: the trained file made into the method's reference (its
    # decisions are in the file), against the converted file. In float32 a random network with random BN is too
    # ill-conditioned to judge this by (RegNetY after SFP: float32 logits 0.4 % off float64's, so the run's own
    # float32 proof reads 9.8 at a logit scale of 850), while float64 gives 3e-8 there; what is left is the
    # float32 rounding of the files' weights (folded or averaged in float64, stored in float32).
    _, val = make_loaders("synthetic", None, 8, "cpu", seed=0, workers=0, image_size=size_of(arch), num_classes=1000)
    proof_images = torch.cat([images for _, (images, _) in zip(range(4), val.batches())]).double()
    reference = method_reference(name, arch, out / "finish.hdf5").double()
    diff = max_logit_diff(reference, converted.double(), [proof_images])
    assert diff < 1e-4 * logit_scale(reference, proof_images), diff  # float32 weights: 2.5e-5 at most seen


def method_reference(name, arch, trained_file):
    """What the method's conversion must equal, rebuilt from its trained file: ResRep's net with the masked rows
    zeroed (followers too), C-SGD's with every cluster averaged, the others' trained (zeroed) net itself."""
    state, deps, attrs = read_hdf5(trained_file)
    graph = arch_graph(arch)
    if name == "resrep":
        model, _, pruned = resrep_model(arch)
        model.load_state_dict(state)
        return zero_masked_rows(model, pruned).eval()
    model = build_model(arch, deps)
    if name == "csgd":
        first = {g.producers[0].conv: g.id for g in graph.groups}
        state = collapse(state, graph, {first[conv]: merge(c) for conv, c in attrs["decisions"].items()})
    model.load_state_dict(state)
    return model.eval()




# --- the generated table of docs/TORCHVISION.md ---------------------------------------------------------------
@pytest.mark.parametrize("name", ["mobilenet_v2", "resnext50_32x4d", "densenet121", "squeezenet1_1", "regnet_y_400mf"])
def test_the_docs_table_is_what_the_generator_gives(name):
    """A row of docs/TORCHVISION.md that the code no longer gives (the table was not regenerated) fails here."""
    import os

    from utils.torchvision_support import row, table_methods

    doc = open(os.path.join(os.path.dirname(__file__), "..", "docs", "TORCHVISION.md")).read()
    line = "| " + " | ".join(row(name, table_methods())) + " |"
    assert line in doc, line


def test_the_generator_says_which_method_runs_and_why_not():
    from utils.torchvision_support import row, table_methods

    methods = table_methods()
    assert row("mobilenet_v2", methods)[4:] == ["yes"] * len(methods)
    assert row("resnext50_32x4d", methods)[3] == "16 internal, 4 residual, 1 stem"  # the grouped bottlenecks too
    assert dict(zip(methods, row("regnet_x_8gf", methods)[4:]))["resrep"] == "yes"
    assert row("densenet121", methods)[4:] == ["yes"] * len(methods)  # its bottlenecks; the growth widths kept
    refused = row("shufflenet_v2_x0_5", methods)
    assert refused[1] == "refused" and "unsupported op call_method size" in refused[3]
    assert dict(zip(methods, row("squeezenet1_1", methods)[4:]))["resrep"] == "no group to prune"
