"""Every surgery is exact: the narrow network gives the logits of the network it came from."""
import random

import pytest
import torch
from torch import nn

from base_model import build_model
from helpers import FlattenNet, example_input, random_model
from utils.pruning.channel_graph import arch_graph, build_channel_graph
from utils.pruning.flops import count
from utils.pruning.surgery import SurgeryError, collapse, fold, fuse_bn, fuse_bn_state, keep, merge, narrow

ARCHS = ["src56", "sres50", "vc"]
PRUNABLE = ("internal", "residual", "stem")


def max_diff(a, b):
    return (a - b).abs().max().item()


def assert_same_logits(before, after):
    """Equal within float32 round-off: 1e-4, or 1e-5 of the logits' scale for deep random nets."""
    scale = before.abs().max().item()
    assert scale > 1e-2, "logits are trivially small"
    assert max_diff(before, after) < max(1e-4, 1e-5 * scale)


def logits(model, state, x):
    model.load_state_dict(state)
    with torch.no_grad():
        return model.eval()(x)


def random_keep(group, rng):
    return sorted(rng.sample(range(group.width), rng.randint(1, group.width - 1)))


def random_clusters(group, rng):
    order = list(range(group.width))
    rng.shuffle(order)
    cuts = sorted(rng.sample(range(1, group.width), rng.randint(1, group.width - 1)))
    return [order[a:b] for a, b in zip([0, *cuts], [*cuts, group.width])]


def producer_keys(p):
    return [f"{p.conv}.weight"] + [f"{p.bn}.{k}" for k in ("weight", "bias", "running_mean", "running_var")]


@pytest.mark.parametrize("arch", ARCHS)
def test_keep_is_exact(arch):
    rng, graph = random.Random(1), arch_graph(arch)
    model = random_model(arch)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    decisions = {g.id: keep(random_keep(g, rng)) for g in graph.by_role(*PRUNABLE)}
    for gid, d in decisions.items():  # dropped channels output exactly 0, as a pruned channel should
        dropped = sorted(set(range(graph.groups[gid].width)) - {c[0] for c in d.clusters})
        for p in graph.groups[gid].producers:
            state[f"{p.bn}.weight"][dropped] = 0
            state[f"{p.bn}.bias"][dropped] = 0
    x = example_input(arch)
    before = logits(model, state, x)
    narrow_state, deps = narrow(state, graph, decisions)
    after = logits(build_model(arch, deps), narrow_state, x)
    assert_same_logits(before, after)
    for gid, d in decisions.items():
        assert {deps[i] for i in graph.groups[gid].deps_indices} == {len(d.clusters)}
    assert count(graph, deps)[0] < count(graph, model.deps)[0]


@pytest.mark.parametrize("arch", ARCHS)
def test_merge_identical_filters_is_exact(arch):
    rng, graph = random.Random(2), arch_graph(arch)
    model = random_model(arch)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    decisions = {g.id: merge(random_clusters(g, rng)) for g in graph.by_role(*PRUNABLE)}
    for gid, d in decisions.items():  # the state C-SGD converges to: members of a cluster are equal
        for p in graph.groups[gid].producers:
            for key in producer_keys(p):
                for c in d.clusters:
                    state[key][c] = state[key][c[0]].clone()
    x = example_input(arch)
    before = logits(model, state, x)
    narrow_state, deps = narrow(state, graph, decisions)
    after = logits(build_model(arch, deps), narrow_state, x)
    assert_same_logits(before, after)


@pytest.mark.parametrize("arch", ["src56", "sres50"])
def test_collapse_computes_what_the_merged_net_computes(arch):
    # Members NOT identical: the cluster-averaged full-width net is what the merge turns narrow.
    rng, graph = random.Random(3), arch_graph(arch)
    model = random_model(arch)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    decisions = {g.id: merge(random_clusters(g, rng)) for g in graph.by_role(*PRUNABLE)}
    x = example_input(arch)
    raw = logits(model, state, x)
    averaged = collapse(state, graph, decisions)
    before = logits(model, averaged, x)
    narrow_state, deps = narrow(state, graph, decisions)
    after = logits(build_model(arch, deps), narrow_state, x)
    assert_same_logits(before, after)
    assert max_diff(raw, after) > 100 * max(1e-4, 1e-5 * raw.abs().max().item())  # the members did differ
    for gid, d in decisions.items():
        p = graph.groups[gid].producers[0]
        c = max(d.clusters, key=len)
        w = averaged[f"{p.conv}.weight"]
        assert torch.equal(w[c], w[c[0]].expand_as(w[c]))


def with_compactors(model, graph, compactors):
    """The ResRep training form: a 1x1 compactor after each chosen conv's BN, before its ReLU or sum."""
    for conv, q in compactors.items():
        p = next(p for g in graph.groups for p in g.producers if p.conv == conv)
        compactor = nn.Conv2d(q.shape[0], q.shape[0], 1, bias=False)
        compactor.weight.data.copy_(q.reshape(*q.shape, 1, 1))
        parent, _, child = p.bn.rpartition(".")
        setattr(model.get_submodule(parent), child, nn.Sequential(model.get_submodule(p.bn), compactor))
    return model.eval()


@pytest.mark.parametrize("arch", ARCHS)
def test_fold_compactors_is_exact(arch):
    rng, graph = random.Random(3), arch_graph(arch)
    torch.manual_seed(3)
    model = random_model(arch)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    decisions, all_q = {}, {}
    for g in graph.by_role(*PRUNABLE):
        kept = random_keep(g, rng)
        qs = {}
        for p in g.producers:
            q = torch.randn(g.width, g.width) / g.width ** 0.5
            q[sorted(set(range(g.width)) - set(kept))] = 0  # masked rows, driven to zero by ResRep
            qs[p.conv] = q
        decisions[g.id] = fold(qs, kept)
        all_q.update(qs)
    x = example_input(arch)
    with torch.no_grad():
        before = with_compactors(model, graph, all_q)(x)
    narrow_state, deps = narrow(state, graph, decisions)
    after = logits(build_model(arch, deps), narrow_state, x)
    assert_same_logits(before, after)


@pytest.mark.parametrize("arch", ARCHS)
def test_fuse_bn_is_exact(arch):
    graph, model = arch_graph(arch), random_model(arch)
    x = example_input(arch)
    with torch.no_grad():
        before = model(x)
    fused_state = fuse_bn_state(model.state_dict(), graph)
    assert not any(".bn." in k for k in fused_state)
    deploy = fuse_bn(build_model(arch), graph)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in deploy.modules())
    assert_same_logits(before, logits(deploy, fused_state, x))


def test_linear_reading_a_block_per_channel():
    torch.manual_seed(0)
    model = FlattenNet().eval()
    x = torch.randn(3, 3, 6, 6)
    graph = build_channel_graph(model, x)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    for key in producer_keys(graph.groups[1].producers[0]):
        state[key][3] = state[key][0].clone()
        state[key][2] = state[key][1].clone()
    before = logits(model, state, x)
    narrow_state, deps = narrow(state, graph, {1: merge([[0, 3], [4], [1, 2]])})
    assert deps == [4, 3] and narrow_state["fc.weight"].shape == (2, 27)
    assert_same_logits(before, logits(FlattenNet(4, 3), narrow_state, x))


def test_bad_decisions_are_refused():
    graph = arch_graph("src56")
    state = build_model("src56").state_dict()
    g = graph.groups[1]
    with pytest.raises(SurgeryError, match=r"channel 16 out of range 0..15"):
        narrow(state, graph, {1: keep([0, 16])})
    with pytest.raises(SurgeryError, match=r"channel 3 appears twice"):
        narrow(state, graph, {1: merge([[3, 4], [3]])})
    with pytest.raises(SurgeryError, match=r"keep at least one channel"):
        narrow(state, graph, {1: keep([])})
    with pytest.raises(SurgeryError, match=r"compactor of stage1.block0.conv1.conv has shape \(8, 8\), expected \(16, 16\)"):
        narrow(state, graph, {1: fold({g.producers[0].conv: torch.eye(8)}, [0])})
    with pytest.raises(SurgeryError, match=r"compactors given for \[\] but the group's convs are"):
        narrow(state, graph, {1: fold({}, [0])})
