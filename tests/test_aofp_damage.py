"""AOFP's damage probe: the ablated pass leaves BN's statistics alone, masks half the search set, and
measures the damage the original's two passes through the scorer measure (specs A2), by default too."""
from types import SimpleNamespace

import pytest
import torch
from aofp_helpers import LAYER, ZEROED, half_zero_model, original_damage
from helpers import FlattenNet, example_input, random_model, randomize_bn

from aofp.hook import AOFPSearch
from aofp.method import AOFP
from aofp.probe import BN_MODES
from utils.pruning.channel_graph import arch_graph, build_channel_graph
from utils.training import dist, skeleton

# --- the ablated pass --------------------------------------------------------------------------

@pytest.mark.parametrize("bn_mode", BN_MODES)
def test_ablated_pass_leaves_bn_running_stats_untouched(bn_mode):
    plain, probed = random_model("src20", seed=1).train(), random_model("src20", seed=1).train()
    graph = arch_graph("src20")
    # 9 layers, all starting at step 0
    hook = AOFPSearch(graph, probed.deps, iters_per_half=5, warmup=0, bn_mode=bn_mode).attach(probed)
    x = example_input("src20", batch=8)

    class Step:  # what the hook reads from the trainer
        step, device, ctx = 0, torch.device("cpu"), dist.DistContext()
    hook.before_step(Step, x, None)
    assert all(p.drawn is not None for p in hook.probes)
    plain(x), probed(x)
    assert all(p.t is not None and 0 < p.t < 10 for p in hook.probes)
    for (name, a), b in zip(plain.state_dict().items(), probed.state_dict().values()):
        assert torch.equal(a, b), name  # running_mean, running_var, num_batches_tracked


def test_each_step_masks_half_the_search_set_and_credits_its_t_to_exactly_those_filters():
    model, graph = random_model("src20", seed=1).train(), arch_graph("src20")
    hook = AOFPSearch(graph, model.deps, iters_per_half=5, warmup=0, seed=3).attach(model)  # all start at step 0
    hook.layers[0].set_keep(torch.arange(16) % 4 != 0)  # 12 survivors: masks of 6, never a pruned filter
    x = example_input("src20", batch=8)

    class Step:  # what the hook reads from the trainer
        step, device, ctx, log = 0, torch.device("cpu"), dist.DistContext(), None
    want_t = [torch.zeros(p.layer.width, dtype=torch.float64) for p in hook.probes]
    want_n = [torch.zeros(p.layer.width, dtype=torch.float64) for p in hook.probes]
    draws = []
    for step in range(2):
        Step.step = step
        hook.before_step(Step, x, None)
        drawn = [p.drawn.clone() for p in hook.probes]
        hook.before_step(Step, x, None)  # the draw is a function of (seed, step): the same again
        assert all(torch.equal(d, p.drawn) for d, p in zip(drawn, hook.probes))
        for d, p in zip(drawn, hook.probes):
            assert d.sum() == p.layer.alive // 2 and not (d.bool() & ~p.layer.keep).any()
        model(x)
        for p, d, wt, wn in zip(hook.probes, drawn, want_t, want_n):
            wt += float(p.t) * d.double()
            wn += d.double()
        Step.step = step + 1
        hook.after_step(Step)
        assert all(p.drawn is None and p.t is None for p in hook.probes)
        draws.append(drawn)
    assert not torch.equal(draws[0][0], draws[1][0])  # a new mask every step
    for p, wt, wn in zip(hook.probes, want_t, want_n):
        assert torch.allclose(p.layer.acc_t, wt, rtol=1e-12, atol=0) and torch.equal(p.layer.acc_n, wn)
        assert p.layer.half_start == 0 and p.layer.alive == p.layer.search.sum()  # no decision before 5 steps


@pytest.mark.parametrize("bn_mode", ["base", "own"])
def test_damage_is_zero_for_harmless_filters_and_positive_otherwise(bn_mode):
    model = half_zero_model().train()
    graph = arch_graph("src20")
    hook = AOFPSearch(graph, model.deps, groups=[graph.group_of(LAYER).id], bn_mode=bn_mode).attach(model)
    probe, x = hook.probes[0], example_input("src20", batch=8)
    probe.layer.restart(0)
    for drawn, harmless in ((ZEROED[:4], True), ([1, 3], False)):
        probe.drawn = torch.zeros(16)
        probe.drawn[drawn] = 1
        model(x)
        assert (probe.t == 0) if harmless else (probe.t > 0.01), (drawn, probe.t)


# The damage probe against the original's two passes (aofp_helpers.original_damage), case by case.
VC_DEPS = [8, 8, 12, 12, 16, 16, 16, 16, 16, 16, 16, 16, 16]  # a narrow vc: fast, same structure
DAMAGE_CASES = {
    # case: (arch, searched convs (the first is measured; a second one is its scorer, searched too),
    #        scorer module, scorer's BN, does a ReLU follow the scorer)
    "src20-conv": ("src20", ["stage1.block0.conv1.conv"], "stage1.block0.conv2.conv", "stage1.block0.conv2.bn",
                   False),  # the block's conv2 output joins the residual sum before any ReLU
    "vc-conv-scorer-pruned": ("vc", ["stem.conv3.conv", "stem.conv4.conv"], "stem.conv4.conv", "stem.conv4.bn",
                              True),
    "vc-linear": ("vc", ["stem.conv13.conv"], "linear1", None, True),  # flatten at 1x1: one column per channel
    "flatten-linear": ("flatten", ["b.conv"], "fc", None, False),  # 3x3 map flattened: 9 columns per channel
}


def _damage_model(case):
    arch, convs, scorer, bn, relu = DAMAGE_CASES[case]
    if arch == "flatten":
        model = randomize_bn(FlattenNet(), 6, seed=4)
        graph, deps = build_channel_graph(model, torch.randn(1, 3, 6, 6)), [4, 5]
        x = torch.randn(8, 3, 6, 6, generator=torch.Generator().manual_seed(5))
    else:
        model = random_model(arch, VC_DEPS if arch == "vc" else None, seed=4)
        graph, deps, x = arch_graph(arch), model.deps, example_input(arch, batch=8, seed=5)
    return model.train(), graph, deps, x


@pytest.mark.parametrize("case", list(DAMAGE_CASES))
def test_damage_equals_the_originals_two_pass_computation(case):
    """The probe's t (one real train-mode forward) against the original's two passes, for both BN modes. Both
    the measured layer and (in vc) its scorer have pruned filters: the base masks gate both passes, and the
    scorer's own mask multiplies Z and Z'."""
    arch, convs, scorer_name, bn_name, relu = DAMAGE_CASES[case]
    model, graph, deps, x = _damage_model(case)
    scorer, bn = model.get_submodule(scorer_name), bn_name and model.get_submodule(bn_name)
    seen = {}
    capture = scorer.register_forward_pre_hook(lambda m, args: seen.update(x=args[0].detach().clone()),
                                               prepend=True)  # before the probe's gate: the raw input
    t = {}
    for bn_mode in BN_MODES:
        hook = AOFPSearch(graph, deps, groups=[graph.group_of(c).id for c in convs], bn_mode=bn_mode).attach(model)
        probe = hook.probes[0]
        consumer = graph.group_of(convs[0]).consumers[0]
        assert (probe.post_relu, probe.kind) == (relu, "conv" if bn_name else "linear")
        for layer in hook.layers:  # a third of each searched layer is pruned already
            layer.set_keep(torch.arange(layer.width) % 3 != 1)
        layer = probe.layer
        layer.restart(0)
        drawn = layer.draw(torch.Generator().manual_seed(7))
        assert drawn.sum() == layer.alive // 2 and not (drawn & ~layer.keep).any()
        probe.drawn = drawn.float()
        model(x)
        scorer_keep = hook.layers[1].keep if len(convs) > 1 else None
        want = original_damage(seen["x"], layer.keep.clone(), drawn, scorer, bn, relu, scorer_keep, bn_mode,
                               consumer.block)
        assert 1e-3 < want < 10  # a real ablation: neither nothing nor everything removed
        assert float(probe.t) == pytest.approx(want, rel=1e-5), bn_mode
        t[bn_mode] = (float(probe.t), want)
        hook.detach()
    capture.remove()
    (own, own_want), (base, base_want) = t["own"], t["base"]
    if bn_name is None:  # nothing to normalise: the mode cannot matter
        assert own == base
    else:  # the same ablation, measured two ways
        assert abs(own_want - base_want) > 0.01 * base_want and abs(own - base) > 0.01 * base


def test_the_command_lines_default_measures_the_originals_damage():
    """`python aofp/do_aofp.py -a src20` with no --bn-mode builds a search whose probe measures t as the original
    does, each pass normalised with its own batch statistics, not as --bn-mode base would (a default changed in
    the command line or anywhere on its way to the probe fails here)."""
    args = skeleton.parse(AOFP, ["-a", "src20", "--data", "synthetic"])
    AOFP.validate(args)
    model, graph, deps, x = _damage_model("src20-conv")
    run = SimpleNamespace(args=args, graph=graph, model=model, cfg=SimpleNamespace(seed=0))
    hook = AOFP.prepare(run).hook.attach(model)
    probe = next(p for p in hook.probes if p.layer is hook.layers[0])
    assert graph.group_of(LAYER).id == hook.layers[0].group
    scorer, bn = model.get_submodule("stage1.block0.conv2.conv"), model.get_submodule("stage1.block0.conv2.bn")
    seen = {}
    capture = scorer.register_forward_pre_hook(lambda m, a: seen.update(x=a[0].detach().clone()), prepend=True)
    layer = probe.layer
    layer.restart(0)
    drawn = layer.draw(torch.Generator().manual_seed(7))
    for other in hook.probes:
        other.drawn = drawn.float() if other is probe else None
    model(x)
    capture.remove()
    hook.detach()
    own, base = (original_damage(seen["x"], layer.keep.clone(), drawn, scorer, bn, False, None, mode)
                 for mode in ("own", "base"))
    assert abs(own - base) > 0.01 * base  # the two modes measure apart here
    assert float(probe.t) == pytest.approx(own, rel=1e-5)
