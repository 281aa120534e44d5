"""ResRep: compactors, gradient resetting, mask selection, exact conversion, the entry script."""
import copy
import math
import os
import random
import subprocess
import sys

import pytest
import torch

from base_model import build_model
from helpers import TEST_INPUT, example_input, gloo_group, random_model, spawn_ranks
from rr import exp_resrep
from rr.compactor import Compactor, PrunedGroup, compactor_rule, insert_compactors, resrep_model
from rr.convert import convert_state, pruned_row_norm, zero_masked_rows
from rr.masks import MacsCounter, select_masks
from rr.resrep import ResRepConfig, ResRepHook, reset_gradients
from utils.command import run_main
from utils.pruning.channel_graph import arch_graph, arch_graph_at
from utils.pruning.flops import count
from utils.tools.store import load_hdf5, model_from_hdf5, read_hdf5, save_hdf5
from utils.training import dist
from utils.training.cli import base_weights
from utils.training.data import make_loaders
from utils.training.engine import Hook, TrainConfig, Trainer, param_groups


@pytest.fixture(autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # the CPU is shared; small ops gain nothing from threads
    yield
    torch.set_num_threads(n)


def resrep(arch, seed=0):
    model = random_model(arch, seed=seed)
    graph = arch_graph_at(arch, model.deps)
    return model, graph, insert_compactors(model, graph)


def perturb_compactors(groups, scale=0.3, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for pg in groups:
            for c in pg.compactors():
                w = c.pwc.weight  # rows of norm ~scale added: activations keep their scale through deep nets
                w.add_(torch.randn(w.shape, generator=g) * scale / math.sqrt(w.shape[1]))


def random_masks(groups, fraction=0.4, seed=0):
    rng = random.Random(seed)
    for pg in groups:
        w = pg.group.width
        pg.set_masked(sorted(rng.sample(range(w), rng.randint(0, min(w - 1, int(w * fraction) + 1)))))


class Probe(Hook):
    """Calls back at chosen points of the training loop. Its place in the hook list relative to the
    ResRepHook says what it sees: before it, the state ResRep starts from; after it, what ResRep left."""

    def __init__(self, before_step=None, after_backward=None, after_step=None):
        self.calls = {"before_step": before_step, "after_backward": after_backward, "after_step": after_step}

    def before_step(self, trainer, images, labels):
        if self.calls["before_step"]:
            self.calls["before_step"](trainer, images, labels)

    def after_backward(self, trainer):
        if self.calls["after_backward"]:
            self.calls["after_backward"](trainer)

    def after_step(self, trainer):
        if self.calls["after_step"]:
            self.calls["after_step"](trainer)


def tiny_trainer(model, groups, hooks, tmp_path, steps, batch=8, lr=0.05, image_size=16, ctx=None, rank=0, world=1):
    """A real Trainer on synthetic data, small images (global pooling is adaptive), the compactor rule."""
    cfg = TrainConfig(epochs=1, batch_size=batch, lr=lr, schedule="cosine", max_steps=steps, output=str(tmp_path))
    train, val = make_loaders("synthetic", None, batch, "cpu", rank, world, image_size=image_size, num_classes=10)
    return Trainer(cfg, model, train, val, ctx or dist.DistContext(), hooks=hooks, param_rule=compactor_rule(groups))


def masked_count(groups):
    return sum(len(pg.masked()) for pg in groups)


# --- compactors -----------------------------------------------------------------------------------

@pytest.mark.parametrize("arch", ["src56", "vc", "sres50"])
def test_identity_compactors_give_the_plain_logits(arch):
    plain = random_model(arch)
    model, graph, groups = resrep(arch)
    x = example_input(arch)
    with torch.no_grad():
        assert torch.equal(model.eval()(x), plain.eval()(x))
    internal = graph.by_role("internal")
    assert [pg.id for pg in groups] == [g.id for g in internal]  # by role, not by index
    names = set(model.state_dict())
    for pg in groups:
        conv = pg.group.producers[0].conv
        parent = conv.rpartition(".")[0]
        assert f"{parent}.compactor.pwc.weight" in names and f"{parent}.compactor.mask" in names
    # every base tensor keeps its name: a plain file loads with only the compactors missing
    assert set(plain.state_dict()) == {k for k in names if ".compactor." not in k}


def test_compactor_sits_after_bn_and_before_relu():
    model, _, _ = resrep("src20")
    assert list(model.stage1.block0.conv1._modules) == ["conv", "bn", "compactor", "relu"]
    assert list(model.stage1.block0.conv2._modules) == ["conv", "bn"]  # residual: not pruned by default


def test_optimizer_rule_for_compactors():
    model, _, groups = resrep("src20")
    cfg = TrainConfig(lr=0.01, weight_decay=1e-4)
    by_name = {n: g for g in param_groups(model, cfg, compactor_rule(groups)) for n in g["names"]}
    comp = by_name["stage1.block0.conv1.compactor.pwc.weight"]
    assert comp["momentum"] == 0.99 and comp["weight_decay"] == 0 and comp["lr"] == 0.01
    conv = by_name["stage1.block0.conv1.conv.weight"]
    assert conv["momentum"] == 0.9 and conv["weight_decay"] == 1e-4
    assert by_name["stage1.block0.conv1.bn.weight"]["weight_decay"] == 0
    assert by_name["linear.bias"]["lr"] == pytest.approx(0.02) and by_name["linear.bias"]["weight_decay"] == 0


# --- gradient resetting ---------------------------------------------------------------------------

def test_reset_rule_on_a_tiny_layer():
    comp = Compactor(4)
    with torch.no_grad():
        comp.pwc.weight.copy_(torch.tensor([[3., 4, 0, 0], [1, 0, 0, 0], [0, 0, 0, 0], [0, 2, 0, 0]]).view(4, 4, 1, 1))
    comp.mask.copy_(torch.tensor([1., 0, 0, 1]))
    task = torch.arange(16.).view(4, 4, 1, 1)
    comp.pwc.weight.grad = task.clone()
    lam = 0.5
    reset_gradients([PrunedGroup(None, {}, {"c": comp})], lam)
    g = comp.pwc.weight.grad.view(4, 4)
    assert torch.allclose(g[0], task.view(4, 4)[0] + lam * torch.tensor([0.6, 0.8, 0, 0]))
    assert torch.allclose(g[1], lam * torch.tensor([1., 0, 0, 0]))  # masked: only the penalty
    assert torch.equal(g[2], torch.zeros(4))  # masked and exactly zero: no NaN
    assert torch.allclose(g[3], task.view(4, 4)[3] + lam * torch.tensor([0., 1, 0, 0]))


def test_masks_do_not_change_the_forward():
    model, graph, groups = resrep("src20")
    perturb_compactors(groups)
    x = example_input("src20")
    with torch.no_grad():
        before = model.eval()(x)
        random_masks(groups)
        assert torch.equal(model(x), before)


def test_gradient_reset_inside_a_real_training_step(tmp_path):
    """After one real engine step, the gradient SGD used is m_j * task gradient + lambda * q_j / ||q_j||, with
    the task gradient recomputed here by a separate forward/backward on the same batch and weights."""
    model, graph, groups = resrep("src20")
    perturb_compactors(groups, 0.3)
    random_masks(groups, fraction=0.5, seed=3)
    assert all(0 < len(pg.masked()) < pg.group.width for pg in groups[:3])  # masked and unmasked rows both
    lam, lr = 0.02, 0.05
    seen = {}

    def before(trainer, images, labels):
        seen.update(x=images.clone(), y=labels.clone(), state=copy.deepcopy(model.state_dict()))

    def grads(trainer):  # placed after the ResRepHook: the gradient optimizer.step will use
        seen["grad"] = {path: comp.pwc.weight.grad.clone() for pg in groups
                        for path, comp in zip(pg.paths.values(), pg.compactors())}

    hook = ResRepHook(graph, model.deps, groups, ResRepConfig(lasso_strength=lam, before_mask_iters=100))
    trainer = tiny_trainer(model, groups, [Probe(before_step=before), hook, Probe(after_backward=grads)], tmp_path,
                           steps=1, lr=lr, image_size=32)
    trainer.train_one_epoch(0)
    assert trainer.step == 1 and hook.updates == 0

    ref = resrep("src20", seed=5)[0]  # other weights, then the captured ones: nothing shared with `model`
    ref.load_state_dict(seen["state"])
    ref.train()
    torch.nn.functional.cross_entropy(ref(seen["x"]), seen["y"]).backward()
    checked_masked = checked_kept = 0
    for path, got in seen["grad"].items():
        q = seen["state"][f"{path}.pwc.weight"]
        mask = seen["state"][f"{path}.mask"].view(-1)
        task = ref.get_submodule(path).pwc.weight.grad
        lasso = lam * q / q.flatten(1).pow(2).sum(1).sqrt().view(-1, 1, 1, 1)
        off, on = mask == 0, mask == 1
        assert torch.allclose(got[off], lasso[off], rtol=1e-5, atol=1e-9), path  # the task gradient is gone
        assert torch.allclose(got[on], task[on] + lasso[on], rtol=1e-5, atol=1e-9), path
        checked_masked += int(off.sum())
        checked_kept += int(on.sum())
        if off.any():  # the check has teeth: a masked row's task gradient is far above the tolerance
            assert task[off].abs().max() > 1e-3, path  # ~1e-2 here; the tolerance is ~1e-7
        # and it is the gradient the step used: first SGD step, no weight decay on compactors
        now = model.get_submodule(path).pwc.weight.detach()
        assert torch.allclose(now, q - lr * got, rtol=1e-6, atol=1e-8), path
    assert checked_masked > 20 and checked_kept > 20


# --- mask selection -------------------------------------------------------------------------------

class Walk:
    """What original_walk saw: rows masked in walk order (group id, channel), entries skipped, whether the cap
    ended the walk, and whether its last visited entry was a skipped one."""

    def __init__(self):
        self.rows, self.skipped, self.capped, self.last_skipped = [], 0, False, False

    def masks(self, gids, n=None):
        out = {g: [] for g in gids}
        for gid, j in self.rows[:n]:
            out[gid].append(j)
        return {g: sorted(c) for g, c in out.items()}


def original_walk(graph, base_deps, norms, masked_now, target, granularity, at_least):
    """The original's selection as specs/resrep.md 2.3 states it, written from the spec, not from rr/masks.py:
    the cap is set from the masks in place; the walk starts from the unpruned widths and goes through all rows
    ascending by norm; before each entry the MACs are recounted from a whole deps list; an entry whose group is
    at `at_least` is skipped; the cap counts every visited entry, skipped ones included."""
    base = count(graph, base_deps)[0]
    now = list(base_deps)
    for gid, n in masked_now.items():
        for p in graph.groups[gid].producers:
            now[p.index] -= n
    cap = sum(masked_now.values()) + granularity if count(graph, now)[0] > target * base else math.inf
    entries = sorted((v, gid, j) for gid, t in norms.items() for j, v in enumerate(t.double().tolist()))
    attempt, walk, visited = list(base_deps), Walk(), 0
    for _, gid, j in entries:
        if count(graph, attempt)[0] <= target * base:
            break
        producers = graph.groups[gid].producers
        walk.last_skipped = attempt[producers[0].index] <= at_least
        if walk.last_skipped:
            walk.skipped += 1
        else:
            for p in producers:
                attempt[p.index] -= 1
            walk.rows.append((gid, j))
        visited += 1
        if visited >= cap:
            walk.capped = True
            break
    return walk


def norms_with_a_tiny_group(groups, tiny=True, seed=1):
    """Random distinct norms; with `tiny`, the first group's rows are the smallest of all, so the walk takes
    them first, the group reaches num_at_least, and its last rows are skipped entries."""
    g = torch.Generator().manual_seed(seed)
    norms = {pg.id: torch.rand(pg.group.width, generator=g) for pg in groups}
    if tiny:
        norms[groups[0].id] *= 1e-3
    return norms


def test_incremental_macs_equal_a_full_recount():
    graph, deps = arch_graph("sres50"), build_model("sres50").deps
    counter = MacsCounter(graph, graph.widths(deps))
    rng = random.Random(0)
    for _ in range(200):
        counter.remove_one(rng.choice([g.id for g in graph.groups if counter.widths[g.id] > 1]))
    assert counter.macs == count(graph, graph.deps_at(deps, counter.widths))[0]


# (target, begin_granularity, rows masked now in every group, tiny group, rows the walk masks, skipped, capped)
# src20's internal groups have 16,16,16,32,32,32,64,64,64 rows; num_at_least is 3.
AGREEING_CASES = [
    (0.5, 4, 0, True, 4, 0, True),  # the cap binds on the tiny group's rows, before any skip
    (0.3, 7, 2, False, 25, 0, True),  # the cap binds (18 + 7), no group reaches the floor
    (0.5, 10**6, 0, True, None, 3, False),  # no cap: the tiny group stops at 3, its last 3 rows are skipped
    (0.95, 4, 2, True, None, 0, False),  # the masks in place already meet the target: no cap
]


@pytest.mark.parametrize("target, granularity, masked_now, tiny, n, skipped, capped", AGREEING_CASES)
def test_selection_equals_the_originals_walk_when_no_skipped_entry_meets_the_cap(target, granularity, masked_now,
                                                                                  tiny, n, skipped, capped):
    _, graph, groups = resrep("src20")
    norms = norms_with_a_tiny_group(groups, tiny)
    masked_now = {pg.id: masked_now for pg in groups}
    deps = build_model("src20").deps
    got = select_masks(graph, deps, norms, masked_now, target, granularity, num_at_least=3)
    walk = original_walk(graph, deps, norms, masked_now, target, granularity, 3)
    assert (walk.skipped, walk.capped) == (skipped, capped)  # the case is the one described
    assert got == walk.masks(norms)
    if n is not None:
        assert len(walk.rows) == n
    if not capped:  # stopped by the target: the shortest prefix that meets it
        base = count(graph, deps)[0]
        widths = {pg.id: pg.group.width - len(got[pg.id]) for pg in groups}
        assert count(graph, graph.deps_at(deps, widths))[0] <= target * base
        last_gid, _ = walk.rows[-1]
        widths[last_gid] += 1
        assert count(graph, graph.deps_at(deps, widths))[0] > target * base
    if tiny and target <= 0.5 and not capped:
        assert len(got[groups[0].id]) == 16 - 3  # the floor, not below


def test_no_cap_once_the_masks_in_place_meet_the_target():
    """Masks in place on the costly stage-1 channels meet the target; the smallest norms are on the cheap
    stage-3 channels, so the fresh walk needs far more rows than those masked now + begin_granularity, and
    takes them all at once (the cap only applies while the target is not met)."""
    _, graph, groups = resrep("src20")
    deps = build_model("src20").deps
    norms = norms_with_a_tiny_group(groups, tiny=False)
    for pg in groups[6:]:  # stage 3: 64 channels at 8x8
        norms[pg.id] *= 1e-3
    masked_now = {pg.id: 13 if pg.group.width == 16 else 0 for pg in groups}
    now = graph.deps_at(deps, {pg.id: pg.group.width - masked_now[pg.id] for pg in groups})
    target = count(graph, now)[0] / count(graph, deps)[0] + 1e-3
    got = select_masks(graph, deps, norms, masked_now, target, 4, num_at_least=1)
    walk = original_walk(graph, deps, norms, masked_now, target, 4, 1)
    assert not walk.capped and len(walk.rows) > 39 + 4
    assert got == walk.masks(norms)
    assert {g for g, c in got.items() if c} == {pg.id for pg in groups[6:]}


def test_our_cap_counts_only_masked_rows_the_originals_counts_skipped_entries_too():
    """The deliberate deviation (rr/masks.py docstring): where skipped entries come before the cap, we mask
    exactly that many more rows than the original, and the original's rows are a subset of ours. Both are
    prefixes of the uncapped walk."""
    _, graph, groups = resrep("src20")
    norms = norms_with_a_tiny_group(groups)
    masked_now = {pg.id: 2 for pg in groups}
    deps = build_model("src20").deps
    cap = 9 * 2 + 7
    got = select_masks(graph, deps, norms, masked_now, 0.3, 7, num_at_least=3)
    orig = original_walk(graph, deps, norms, masked_now, 0.3, 7, 3)
    free = original_walk(graph, deps, norms, masked_now, 0.3, math.inf, 3)
    # the tiny group: 13 rows down to 3, then its last 3 rows skipped, all within the cap; the walk ends on a
    # masked row, so reading "the cap is checked after every entry" or "after masked ones" gives the same
    assert (orig.skipped, orig.capped, orig.last_skipped) == (3, True, False)
    assert not free.capped and len(free.rows) > cap
    n = sum(map(len, got.values()))
    assert len(orig.rows) == cap - orig.skipped == 22
    assert n == cap == len(orig.rows) + orig.skipped
    assert all(set(orig.masks(norms)[g]) <= set(got[g]) for g in got)
    assert got == free.masks(norms, cap) and orig.masks(norms) == free.masks(norms, cap - orig.skipped)


def test_repeated_updates_grow_by_the_granularity_until_the_target():
    model, graph, groups = resrep("src56")
    cfg = ResRepConfig(flops_target=0.471, before_mask_iters=0, mask_interval=1, begin_granularity=4, num_at_least=1)
    hook = ResRepHook(graph, model.deps, groups, cfg)
    perturb_compactors(groups, 1.0)
    norms = {pg.id: pg.norms() for pg in groups}
    final = original_walk(graph, model.deps, norms, {}, cfg.flops_target, math.inf, 1)  # the shortest prefix
    total = len(final.rows)
    k = -(-total // 4)  # updates until the target: 4 more rows each, the last one possibly fewer
    assert k > 10
    base = count(graph, model.deps)[0]
    ratios, counts, previous = [], [], set()
    for _ in range(k + 1):  # one more after the target: the masks stay
        chosen = hook.update_masks()
        rows = {(g, j) for g, c in chosen.items() for j in c}
        assert previous <= rows  # norms do not change here: each update extends the last
        previous = rows
        counts.append(len(rows))
        ratios.append(count(graph, hook.masked_deps())[0] / base)
    assert counts == [4 * i for i in range(1, k)] + [total, total]
    assert ratios[-3] > cfg.flops_target >= ratios[-2] == ratios[-1]
    assert chosen == final.masks(norms) and hook.updates == k + 1
    deps = hook.masked_deps()
    for pg in groups:  # converted width = origin - masked, never below num_at_least
        assert deps[pg.group.producers[0].index] == pg.group.width - len(pg.masked()) >= 1


def test_mask_update_on_sres50_meets_the_target_with_the_fewest_smallest_rows():
    # How fast it is is measured by benchmarks/; here it must finish and meet the target, and no sooner.
    model, graph, groups = resrep_model("sres50")
    perturb_compactors(groups, 1.0)
    hook = ResRepHook(graph, model.deps, groups, ResRepConfig(flops_target=0.455, begin_granularity=10**9))
    hook.update_masks()
    base = count(graph, model.deps)[0]
    assert count(graph, hook.masked_deps())[0] <= 0.455 * base
    widths = {pg.id: pg.group.width - len(pg.masked()) for pg in groups}
    assert min(widths.values()) > 1  # no group at num_at_least: a plain global ranking
    masked = torch.cat([pg.norms()[pg.masked()] for pg in groups])
    kept = torch.cat([pg.norms()[[j for j in range(pg.group.width) if j not in set(pg.masked())]] for pg in groups])
    assert masked.max() < kept.min()  # the smallest rows of all groups together
    last = max(groups, key=lambda pg: float(pg.norms()[pg.masked()].max()) if pg.masked() else -1.0)
    widths[last.id] += 1  # unmask the largest masked row: the target is no longer met
    assert count(graph, graph.deps_at(model.deps, widths))[0] > 0.455 * base


@pytest.mark.parametrize("before, interval, steps, expected", [(3, 2, 9, [5, 7, 9]), (4, 1, 7, [5, 6, 7]),
                                                              (0, 3, 7, [3, 6])])
def test_mask_updates_happen_at_the_originals_steps(tmp_path, before, interval, steps, expected):
    """The original's trigger: it > before_mask_iters and (it - before_mask_iters) % mask_interval == 0, with
    `it` the number of steps taken. A probe after the ResRepHook sees every step's updates and masks."""
    model, graph, groups = resrep("src20")
    hook = ResRepHook(graph, model.deps, groups, ResRepConfig(flops_target=0.3, before_mask_iters=before,
                                                              mask_interval=interval, begin_granularity=3))
    seen = []
    probe = Probe(after_step=lambda t: seen.append((t.step, hook.updates, masked_count(groups))))
    tiny_trainer(model, groups, [hook, probe], tmp_path, steps=steps).train_one_epoch(0)
    assert [s for s, _, _ in seen] == list(range(1, steps + 1))
    updated = [s for (s, u, _), prev in zip(seen, [0] + [u for _, u, _ in seen]) if u != prev]
    assert updated == expected
    # the masks change at exactly those steps, 3 more rows each (the target is far)
    assert [n for _, _, n in seen] == [3 * sum(s >= e for e in expected) for s in range(1, steps + 1)]


# --- conversion -----------------------------------------------------------------------------------

def check_conversion(arch, model, graph, groups, x):
    state = {k: v.detach() for k, v in model.state_dict().items()}
    narrow_state, deps = convert_state(state, graph, groups)
    for pg in groups:
        assert deps[pg.group.producers[0].index] == pg.group.width - len(pg.masked())
    converted = build_model(arch, deps)
    converted.load_state_dict(narrow_state)  # strict: plain conv+BN names, no compactors left
    with torch.no_grad():
        ref = zero_masked_rows(model, groups).eval()(x)
        diff = (ref - converted.eval()(x)).abs().max().item()
    # 1e-4 at a trained net's logit scale (~10); random nets' larger logits get the same relative bound
    assert diff < 1e-4 * max(1.0, ref.abs().max().item() / 10), diff
    return deps


@pytest.mark.parametrize("arch", ["src56", "sres50", "vc"])
def test_conversion_is_exact_with_random_compactors(arch):
    model, graph, groups = resrep(arch)
    perturb_compactors(groups)
    random_masks(groups)
    deps = check_conversion(arch, model, graph, groups, example_input(arch))
    assert count(graph, deps)[0] < count(graph, model.deps)[0]


def test_conversion_of_residual_groups_is_exact_too():
    model = random_model("src20")
    graph = arch_graph_at("src20", model.deps)
    groups = insert_compactors(model, graph, groups="internal,residual")
    perturb_compactors(groups)
    random_masks(groups)
    check_conversion("src20", model, graph, groups, example_input("src20"))


def short_training(arch, tmp_path, steps=4, batch=8):
    """Steps 2, 3, 4 update the masks (before_mask_iters=1, mask_interval=1), 40 more rows each."""
    model, graph, groups = resrep(arch)
    perturb_compactors(groups, 0.1)
    cfg = TrainConfig(epochs=1, batch_size=batch, lr=0.01, schedule="cosine", max_steps=steps, eval_every=1,
                      output=str(tmp_path))
    train, val = make_loaders("synthetic", None, batch, "cpu", image_size=TEST_INPUT[arch], num_classes=10)
    hook = ResRepHook(graph, model.deps, groups, ResRepConfig(flops_target=0.5, before_mask_iters=1, mask_interval=1,
                                                              begin_granularity=40, lasso_strength=0.1))
    trainer = Trainer(cfg, model, train, val, dist.DistContext(), hooks=[hook], param_rule=compactor_rule(groups))
    trainer.train_one_epoch(0)  # the training loop alone: no evaluation, no files
    return model, graph, groups, hook


@pytest.mark.parametrize("arch", ["src56", "vc"])
def test_conversion_is_exact_after_training_with_masks(arch, tmp_path):
    model, graph, groups, hook = short_training(arch, tmp_path)
    # three updates, each 40 more rows: the target (half the MACs) is far from met with 120 rows
    assert hook.updates == 3 and masked_count(groups) == 120 and hook.reached_at is None
    assert pruned_row_norm(groups) > 0  # unconverged rows: conversion compares with them zeroed
    check_conversion(arch, model, graph, groups, example_input(arch, batch=4))


# --- two processes --------------------------------------------------------------------------------

def _ddp_worker(rank, world, out, graph):
    """src20 with masks updated at steps 2, 4, 6 (the last step), 5 more rows each; what each rank saw goes
    to rank<r>.pt: compactor weights and masked counts before each update (a probe before the ResRepHook),
    the masks after it (a probe after), and the final parameters and masks."""
    with gloo_group() as ctx:
        model = random_model("src20")  # identity compactors: the ranking comes from training alone
        groups = insert_compactors(model, graph)  # the parent's graph: tracing it again costs seconds
        hook = ResRepHook(graph, model.deps, groups, ResRepConfig(flops_target=0.3, before_mask_iters=0,
                                                                  mask_interval=2, begin_granularity=5,
                                                                  lasso_strength=0.01))
        before, after = [], []
        comps = lambda: {path: c.pwc.weight.detach().clone() for pg in groups
                         for path, c in zip(pg.paths.values(), pg.compactors())}
        first = Probe(after_step=lambda t: before.append((t.step, comps(), {pg.id: len(pg.masked()) for pg in groups})))
        last = Probe(after_step=lambda t: after.append((t.step, hook.updates, {pg.id: pg.masked() for pg in groups})))
        tiny_trainer(model, groups, [first, hook, last], out, steps=6, batch=8, ctx=ctx, rank=rank,
                     world=world).train_one_epoch(0)
        torch.save({"params": {n: p.detach().clone() for n, p in model.named_parameters()},
                    "masks": {n: b.clone() for n, b in model.named_buffers() if n.endswith(".mask")},
                    "before": before, "after": after}, os.path.join(out, f"rank{rank}.pt"))


def test_two_gloo_processes_train_alike_and_choose_the_masks_one_process_would(tmp_path):
    _, graph, groups = resrep("src20")
    spawn_ranks(_ddp_worker, str(tmp_path), graph)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))
    # (a) one model on both ranks, bitwise: parameters (compactors included) and masks
    assert r0["params"].keys() == r1["params"].keys() and len(r0["masks"]) == 9
    for k in r0["params"]:
        assert torch.equal(r0["params"][k], r1["params"][k]), k
    for k in r0["masks"]:
        assert torch.equal(r0["masks"][k], r1["masks"][k]), k
    # (b) every update, re-derived in this one process from what the probes saw just before it
    deps = build_model("src20").deps
    updates = [(s, u, m) for s, u, m in r0["after"] if s % 2 == 0]
    assert [(s, u) for s, u, _ in r0["after"]] == [(1, 0), (2, 1), (3, 1), (4, 2), (5, 2), (6, 3)]
    assert r0["after"] == r1["after"]  # the same masks on both ranks right after every update, not one step later
    for (step, weights, masked_now), (step_after, _, got) in zip(r0["before"], r0["after"]):
        assert step == step_after
        if step % 2:
            continue
        norms = {pg.id: torch.stack([torch.linalg.vector_norm(weights[p], dim=(1, 2, 3)) for p in pg.paths.values()])
                 .pow(2).sum(0).sqrt() for pg in groups}
        want = select_masks(graph, deps, norms, masked_now, 0.3, 5, 1)
        assert got == want, step
        assert sum(map(len, got.values())) == 5 * step // 2  # the cap binds: 5 more rows per update
    # the last update is that of the final weights: masks on file = select_masks(final norms, counts at step 4)
    final = {pg.id: (r0["masks"][f"{next(iter(pg.paths.values()))}.mask"] == 0).nonzero().flatten().tolist()
             for pg in groups}
    assert final == updates[-1][2]
    for path in r0["before"][-1][1]:
        assert torch.equal(r0["before"][-1][1][path], r0["params"][f"{path}.pwc.weight"])
    assert sum(r0["before"][-1][2].values()) == 10


# --- the entry script -----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def base_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("base") / "src20.hdf5"
    model = random_model("src20")
    save_hdf5(path, model.state_dict(), deps=model.deps, arch="src20")
    return str(path)


def script_args(base_file, out, steps=6, *extra):
    return ["-a", "src20", "--init", base_file, "--data", "synthetic", "--epochs", "1", "--batch-size", "32",
            "--max-steps", str(steps), "--before-mask-iters", "0", "--mask-interval", "2", "--begin-granularity", "30",
            "--lasso-strength", "0.01", "--deterministic", "--ckpt-every", "2", "--device", "cpu", "-o", str(out),
            *extra]


def test_script_trains_converts_and_proves_it(base_file, tmp_path, capsys):
    exp_resrep.main(script_args(base_file, tmp_path))
    out = capsys.readouterr().out
    assert "src20 ResRep on synthetic: converted top1" in out
    state, deps, attrs = read_hdf5(tmp_path / "finish.hdf5")
    assert deps == build_model("src20").deps and any(".compactor.mask" in k for k in state)
    model, graph, groups = resrep_model("src20")
    load_hdf5(model, tmp_path / "finish.hdf5")  # the trained file loads back into a ResRep model
    assert sum(len(pg.masked()) for pg in groups) == 90  # three updates of 30
    converted, arch, new_deps = model_from_hdf5(tmp_path / "finish_converted.hdf5")
    assert arch == "src20" and sum(new_deps) == sum(deps) - 90
    conv = read_hdf5(tmp_path / "finish_converted.hdf5")[2]["conversion"]
    assert conv["max_logit_diff"] < 1e-4 and conv["new_deps"] == new_deps
    x = example_input("src20")
    with torch.no_grad():
        assert (zero_masked_rows(model, groups).eval()(x) - converted(x)).abs().max() < 1e-4
    log = (tmp_path / "log.txt").read_text()
    assert "max |logit difference| trained vs converted" in log and "old deps" in log and "MACs" in log
    assert "before ResRep (base weights, identity compactors): top1" in log
    assert "warning: pruned rows with norms up to" in log  # six steps: the masked rows have not decayed


def test_resumed_run_equals_an_uninterrupted_one(base_file, tmp_path, capsys):
    exp_resrep.main(script_args(base_file, tmp_path / "whole", 8))
    exp_resrep.main(script_args(base_file, tmp_path / "cut", 5))
    exp_resrep.main(script_args(base_file, tmp_path / "cut", 8))
    assert "resumed from" in (tmp_path / "cut" / "log.txt").read_text()
    a, _, _ = read_hdf5(tmp_path / "whole" / "finish.hdf5")
    b, _, _ = read_hdf5(tmp_path / "cut" / "finish.hdf5")
    for k in a:
        assert torch.equal(a[k], b[k]), k
    hooks = torch.load(tmp_path / "cut" / "checkpoint.pth", weights_only=False)["hooks"]
    assert hooks[1]["updates"] == 4  # steps 2, 4, 6, 8


@pytest.mark.parametrize("extra, needle", [
    (["--init", "/nonexistent/src20.hdf5"], "/nonexistent/src20.hdf5: no such file (the default base model, "
                                            "src20_train/finish.hdf5, is made by `python train_base_model.py -a src20`)"),
    (["--num-at-least", "0"], "--num-at-least must be at least 1, got 0"),
    (["--flops-target", "1.5"], "--flops-target is the fraction of MACs to keep"),
    (["--roles", "output"], "--groups 'output': use 'all' or a comma list of roles"),
])
def test_bad_input_gives_one_error_line(base_file, tmp_path, capsys, extra, needle):
    with pytest.raises(SystemExit) as e:
        run_main(lambda: exp_resrep.main(script_args(base_file, tmp_path, 2, "--mask-interval", "1") + extra))
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.startswith("error:") and needle in err, err
    assert len(err.strip().splitlines()) == 1


def test_default_init_names_the_command_that_makes_it(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for arch, cmd in [("src56", "python train_base_model.py -a src56"), ("sres50", "python transform_torchvision.py`"),
                      ("sres18", "python transform_torchvision.py -a sres18")]:
        with pytest.raises(SystemExit):
            run_main(lambda: exp_resrep.main(["-a", arch, "--device", "cpu"]))
        err = capsys.readouterr().err
        assert cmd in err and base_weights(arch)[0] in err, err


def test_script_runs_from_the_repo_root_without_pythonpath(tmp_path):
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    r = subprocess.run([sys.executable, "rr/exp_resrep.py", "-a", "src56", "-o", str(tmp_path)], cwd=root, env=env,
                       capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr.startswith("error: src56_train/finish.hdf5: no such file"), r.stderr
    assert "`python train_base_model.py -a src56`" in r.stderr


def test_resuming_with_other_resrep_settings_is_refused(base_file, tmp_path):
    exp_resrep.main(script_args(base_file, tmp_path, 2))
    with pytest.raises(ValueError, match="flops_target: 0.471 -> 0.3"):
        exp_resrep.main(script_args(base_file, tmp_path, 4, "--flops-target", "0.3"))
