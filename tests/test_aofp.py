"""AOFP: the binary search, exact pruning, resume, two ranks, the entry script, residual groups and
--round-to (the damage probe: test_aofp_damage.py)."""
import copy
import os
import subprocess
import sys

import pytest
import torch
from aofp_helpers import LAYER, ZEROED, half_zero_model, original_damage, zero_filters
from helpers import SYNTHETIC, example_input, gloo_group, random_model, script, spawn_ranks

from aofp.convert import filter_l1, round_keeps, round_widths, zero_pruned
from aofp.hook import AOFPSearch
from aofp.method import AOFP
from aofp.search import LayerSearch, start_steps
from base_model import build_model
from utils.pruning.channel_graph import arch_graph, arch_graph_at
from utils.pruning.convert import convert
from utils.pruning.flops import count
from utils.pruning.surgery import keep as keep_channels
from utils.pruning.surgery import narrow
from utils.tools.store import model_from_hdf5, read_hdf5, save_hdf5
from utils.training import dist
from utils.training.checkpoint import CheckpointError
from utils.training.data import make_loaders
from utils.training.engine import TrainConfig, Trainer

do_aofp = script(AOFP)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIZE = 16  # synthetic images: small, so the search runs fast on CPU


def target_after(graph, deps, gid, width):
    """A MACs target met exactly when group `gid` is down to `width` channels."""
    narrow = list(deps)
    narrow[graph.groups[gid].producers[0].index] = width
    return count(graph, narrow)[0] / count(graph, deps)[0] + 1e-9


def search_run(out, model, ctx=None, groups="layer", **kw):
    """Train `model` at lr 0 (the search sees a fixed network) with AOFP on it; return (trainer, hook)."""
    ctx = ctx or dist.DistContext()
    graph = arch_graph("src20")
    gid = graph.group_of(LAYER).id
    settings = dict(iters_per_half=6, thresh=0.01, warmup=0, seed=0,
                    macs_target=target_after(graph, model.deps, gid, 16 - len(ZEROED)))
    hook_keys = {*settings, "bn_mode"}
    settings.update({k: v for k, v in kw.items() if k in hook_keys})
    hook = AOFPSearch(graph, model.deps, groups=[gid] if groups == "layer" else groups, **settings)
    cfg = TrainConfig(**{**dict(epochs=40, batch_size=16, lr=0.0, milestones=(), eval_every=1000, log_every=50,
                                ckpt_every=40, deterministic=True, output=str(out)),
                         **{k: v for k, v in kw.items() if k not in hook_keys}})
    train, val = make_loaders("synthetic", None, cfg.batch_size, ctx.device, ctx.rank, ctx.world_size, 0, 0,
                              image_size=SIZE, num_classes=10)
    trainer = Trainer(cfg, model, train, val, ctx, hooks=[hook])
    trainer.fit()
    return trainer, hook


# --- the search itself -------------------------------------------------------------------------

@pytest.fixture(scope="module")
def whole(tmp_path_factory):
    """One uninterrupted search on the half-zero model (shared: it is the slowest part)."""
    out = tmp_path_factory.mktemp("whole")
    trainer, hook = search_run(out, half_zero_model(), max_steps=1500)
    return out, trainer, hook


def test_search_finds_and_prunes_exactly_the_zero_filters_then_stops(whole):
    out, trainer, hook = whole
    layer = hook.layers[0]
    assert layer.keep.nonzero().flatten().tolist() == [i for i in range(16) if i not in ZEROED]
    assert hook.stopped == "target"
    assert trainer.step == hook.moves[-1][0] < 1500  # stopped right after the move that met the target
    assert "prunes" in (out / "log.txt").read_text()


def test_decisions_prune_narrow_restart_and_one_filter_is_done():
    layer = LayerSearch("conv", 0, 8, start_step=0)
    layer.restart(0)
    assert layer.search.all() and layer.active
    drawn = layer.draw(torch.Generator().manual_seed(0))
    assert drawn.sum() == 4 and not (drawn & ~layer.search).any()
    damage = torch.tensor([0.5, 0.001, 0.3, 0.002, 0.4, 0.2, 0.6, 0.7])
    for i in range(8):  # every filter masked once, alone
        layer.accumulate(damage[i], torch.arange(8) == i)
    assert layer.decide(10, 0.01)[0] == "narrow"  # best 4 = {1, 3, 5, 2}: 0.3 fails
    assert layer.search.nonzero().flatten().tolist() == [1, 2, 3, 5] and layer.half_start == 10
    for i in (1, 2, 3, 5):
        layer.accumulate(damage[i], torch.arange(8) == i)
    action, pruned, worst = layer.decide(20, 0.01)  # best 2 = {1, 3}: both harmless
    assert (action, sorted(pruned)) == ("prune", [1, 3]) and worst == pytest.approx(0.002)
    assert layer.alive == 6 and layer.search.sum() == 6 and layer.acc_n.sum() == 0
    assert layer.decide(30, 0.01)[0] == "narrow"  # no samples: never harmless
    two = LayerSearch("conv", 0, 2, 0)
    two.restart(0)
    two.accumulate(torch.tensor(0.0), torch.tensor([True, False]))
    assert two.decide(5, 0.01)[0] == "prune" and two.done and not two.active and two.alive == 1
    one = LayerSearch("conv", 0, 1, 0)
    one.restart(0)
    assert one.done  # nothing to search, and no crash


def test_starts_are_staggered_by_list_position():
    vc = start_steps(13, 1000, 500)  # interval 1000 // 13 = 76
    assert vc[:3] == [500, 576, 652] and vc[-1] == 1412 and len(vc) == 13
    src56 = start_steps(27, 1000, 500)  # interval 37, by list position (the original: by conv index)
    assert src56[:2] == [500, 537] and src56[-1] == 1462 and len(src56) == 27


def test_layer_down_to_one_filter_is_done_and_the_search_ends(tmp_path):
    model = zero_filters(random_model("src20", seed=3), LAYER, list(range(1, 16)))
    trainer, hook = search_run(tmp_path, model, macs_target=None, thresh=10.0, max_steps=400)
    assert hook.layers[0].alive == 1 and hook.layers[0].done
    assert hook.stopped == "exhausted" and trainer.step < 400


# --- pruning is exact --------------------------------------------------------------------------

@pytest.mark.parametrize("arch", ["vc", "src56", "sres50"])
def test_masked_and_pruned_models_give_the_same_logits(arch):
    model, graph = random_model(arch, seed=2), arch_graph(arch)
    hook = AOFPSearch(graph, model.deps)
    g = torch.Generator().manual_seed(0)
    for layer in hook.layers:
        keep = torch.rand(layer.width, generator=g) < 0.6
        keep[torch.randint(layer.width, (1,), generator=g)] = True
        layer.set_keep(keep)
    hook.attach(model.eval())
    x = example_input(arch)
    with torch.no_grad():
        masked = model(x)
        small = convert(model, graph, {g: keep_channels(idx) for g, idx in hook.keeps().items()},
                        lambda deps: build_model(arch, deps), lambda: [x]).model
        assert small.deps != model.deps
        assert (small(x) - masked).abs().max() < 1e-4
        hook.detach()  # the plain model, with the pruned filters zeroed, is the masked model too
        assert (zero_pruned(model, graph, hook.keeps())(x) - masked).abs().max() < 1e-4


# --- resume and two ranks ----------------------------------------------------------------------

@pytest.mark.slow
def test_resumed_search_equals_uninterrupted(tmp_path, whole):
    _, whole_trainer, whole = whole
    assert len(whole.moves) >= 2
    cut = whole.moves[0][0] + 5  # mid-search, after the first move
    search_run(tmp_path / "cut", half_zero_model(), max_steps=cut)
    resumed_trainer, resumed = search_run(tmp_path / "cut", half_zero_model(), max_steps=1500)
    assert "resumed from" in (tmp_path / "cut" / "log.txt").read_text()
    assert resumed.moves == whole.moves and resumed_trainer.step == whole_trainer.step
    for a, b in zip(resumed.state_dict()["layers"], whole.state_dict()["layers"]):
        for k in a:
            assert torch.equal(a[k], b[k]) if torch.is_tensor(a[k]) else a[k] == b[k], k
    # a finished search stays finished when its command is run again
    again_trainer, again = search_run(tmp_path / "cut", half_zero_model(), max_steps=1500)
    assert again_trainer.step == whole_trainer.step and again.moves == whole.moves
    with pytest.raises(CheckpointError, match="thresh: 0.01 -> 0.02"):
        search_run(tmp_path / "cut", half_zero_model(), max_steps=1500, thresh=0.02)


def _rank_worker(rank, world, out):
    with gloo_group() as ctx:
        graph = arch_graph("src20")
        groups = [graph.group_of(LAYER).id, graph.group_of("stage2.block0.conv1.conv").id]
        trainer, hook = search_run(out, half_zero_model(), ctx, groups=groups, max_steps=40, macs_target=None)
        torch.save({"search": hook.state_dict(), "step": trainer.step}, os.path.join(out, f"rank{rank}.pt"))


@pytest.mark.slow
def test_two_gloo_processes_make_the_same_decisions(tmp_path, precision):
    spawn_ranks(_rank_worker, str(tmp_path))
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in (0, 1))
    assert r0["search"]["moves"] and r0["search"]["moves"] == r1["search"]["moves"]
    for a, b in zip(r0["search"]["layers"], r1["search"]["layers"]):
        for k in ("keep", "search", "acc_t", "acc_n"):
            assert torch.equal(a[k], b[k]), k  # each rank sees other images: t is averaged over them


# --- the entry script --------------------------------------------------------------------------

def test_do_aofp_prunes_proves_and_finetunes(tmp_path, capsys):
    base = tmp_path / "base.hdf5"
    model = half_zero_model()
    save_hdf5(base, model.state_dict(), deps=model.deps, arch="src20")
    out = tmp_path / "run"
    # --base: the original's flag, an alias of --init
    do_aofp.main(["-a", "src20", "--base", str(base), *SYNTHETIC, "-o", str(out),
                  "--iters-per-half", "4", "--warmup-iters", "0", "--thresh", "10", "--flops-target", "0.9",
                  "--epochs", "2", "--batch-size", "32", "--ft-epochs", "1", "--ft-batch-size", "32"])
    log = (out / "log.txt").read_text()
    assert "max |logit difference| trained vs converted" in log and "MACs below the target" in log
    diff = float(log.split("max |logit difference| trained vs converted: ")[1].split()[0])
    assert diff < 1e-4
    _, deps, attrs = read_hdf5(out / "finish_converted.hdf5")
    conv = attrs["conversion"]
    assert sum(deps) < sum(model.deps) and conv["macs_ratio"] < 0.9 and conv["max_logit_diff"] < 1e-4
    masked, _, _ = model_from_hdf5(out / "finish.hdf5")  # the plain full-width model is the masked one
    small, _, small_deps = model_from_hdf5(out / "finish_converted.hdf5")
    assert small_deps == deps
    x = example_input("src20", batch=4)
    with torch.no_grad():
        assert (masked(x) - small(x)).abs().max() < 1e-4
    tuned, _, tuned_deps = model_from_hdf5(out / "finetune" / "finish.hdf5")
    assert tuned_deps == deps and "src20 AOFP fine-tuned on synthetic: top1" in capsys.readouterr().out


def test_bad_input_is_refused_with_the_fix(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError, match=r"vc_train/finish.hdf5: no such file; make the base model with "
                                                r"`python train_base_model.py -a vc`"):
        do_aofp.main(["-a", "vc"])
    with pytest.raises(FileNotFoundError, match="python transform_torchvision.py"):
        do_aofp.main(["-a", "sres50"])
    with pytest.raises(ValueError, match="unknown arch"):
        do_aofp.main(["-a", "vgg99"])
    for flags, msg in ((["--flops-target", "0"], "flops-target"), (["--thresh", "-1"], "thresh"),
                       (["--iters-per-half", "0"], "iters-per-half"), (["--warmup-iters", "-5"], "warmup")):
        with pytest.raises(ValueError, match=msg):
            do_aofp.main(["-a", "vc", *flags])
    with pytest.raises(ValueError, match="nothing to search"):
        AOFPSearch(arch_graph("src20"), build_model("src20").deps, groups=[])


def test_script_runs_from_the_repo_root_without_pythonpath(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    r = subprocess.run([sys.executable, os.path.join(REPO, "aofp", "do_aofp.py"), "-a", "vc", "--base",
                        str(tmp_path / "none.hdf5")], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert r.returncode == 2 and "error: --init" in r.stderr and "python train_base_model.py -a vc" in r.stderr


# --- residual groups and the stem ----------------------------------------------------------------

def test_a_residual_group_is_gated_and_scored_at_every_consumer():
    """src20's first residual group (the stem and every stage-1 block's conv2) is read by the three stage-1
    conv1s, stage 2's projection and its first conv1: one probe at each, one drawn mask for all, and the
    group's t is the mean of the original's two-pass damage at each (scorers' own base masks included)."""
    model, graph = random_model("src20", seed=4).train(), arch_graph("src20")
    hook = AOFPSearch(graph, model.deps, groups="all", iters_per_half=5, warmup=0)
    assert {graph.groups[layer.group].role for layer in hook.layers} == {"internal", "residual"}
    assert len(hook.layers) == 12
    res = graph.groups[0]
    assert res.role == "residual" and len(res.producers) == 4 and hook.layers[0].group == 0
    hook.attach(model)
    probes = [p for p in hook.probes if p.layer is hook.layers[0]]
    assert [p.scorer_name for p in probes] == [c.module for c in res.consumers] and len(probes) == 5
    assert [p.post_relu for p in probes] == [True, True, True, False, True]  # the projection's BN feeds an add
    assert probes[3].scorer_layer.group == graph.group_of("stage2.projection.conv").id  # a residual group's mask
    for layer in hook.layers:  # a third of every searched group pruned already
        layer.set_keep(torch.arange(layer.width) % 3 != 1)
        layer.restart(0)
    seen = {}
    captures = [p.scorer.register_forward_pre_hook(
        lambda m, args, name=p.scorer_name: seen.update({name: args[0].detach().clone()}), prepend=True)
        for p in probes]

    class Step:  # what the hook reads from the trainer
        step, device, ctx, log = 0, torch.device("cpu"), dist.DistContext(), None
    x = example_input("src20", batch=8, seed=5)
    hook.before_step(Step, x, None)
    drawn = probes[0].drawn.clone()
    assert all(p.drawn is probes[0].drawn for p in probes) and drawn.sum() == hook.layers[0].alive // 2
    model(x)
    for h in captures:
        h.remove()
    want = [original_damage(seen[p.scorer_name], hook.layers[0].keep.clone(), drawn.bool(), p.scorer, p.bn,
                            p.post_relu, p.scorer_layer.keep if p.scorer_layer else None, "own") for p in probes]
    assert all(1e-3 < w < 10 for w in want)
    for p, w in zip(probes, want):
        assert float(p.t) == pytest.approx(w, rel=1e-5), p.scorer_name
    Step.step = 1
    hook.after_step(Step)
    acc = hook.layers[0].acc_t
    assert torch.allclose(acc[drawn.bool()], torch.tensor(sum(want) / len(want), dtype=torch.float64), rtol=1e-5)
    assert (acc[~drawn.bool()] == 0).all()


@pytest.mark.parametrize("arch", ["src56", "sres50"])
def test_residual_and_stem_groups_prune_exactly(arch):
    """Random base masks on every group (--groups all: residual sums, sres50's stem): the gated net, its plain
    form with the pruned filters zeroed at every producer, and the narrow net give the same logits."""
    model, graph = random_model(arch, seed=2), arch_graph(arch)
    hook = AOFPSearch(graph, model.deps, groups="all")
    roles = {graph.groups[layer.group].role for layer in hook.layers}
    assert roles == ({"internal", "residual", "stem"} if arch == "sres50" else {"internal", "residual"})
    g = torch.Generator().manual_seed(0)
    for layer in hook.layers:
        keep = torch.rand(layer.width, generator=g) < 0.6
        keep[torch.randint(layer.width, (1,), generator=g)] = True
        layer.set_keep(keep)
    hook.attach(model.eval())
    x = example_input(arch)
    with torch.no_grad():
        masked = model(x)
        small = convert(model, graph, {g: keep_channels(idx) for g, idx in hook.keeps().items()},
                        lambda deps: build_model(arch, deps), lambda: [x]).model
        narrowed = graph.widths(small.deps)
        assert all(narrowed[layer.group] < graph.groups[layer.group].width for layer in hook.layers)
        assert (small(x) - masked).abs().max() < 1e-4
        hook.detach()
        assert (zero_pruned(model, graph, hook.keeps())(x) - masked).abs().max() < 1e-4


def test_a_group_that_nothing_consumes_is_refused():
    graph = copy.deepcopy(arch_graph("src20"))  # the cached graph is shared: change a copy
    graph.groups[1].consumers = []
    with pytest.raises(ValueError, match="no layer consumes its channels"):
        AOFPSearch(graph, build_model("src20").deps, groups=[1])


# --- --round-to ----------------------------------------------------------------------------------

def aligned(width, full, n):
    return width == full or (width % n == 0 and width >= n)


def test_rounding_goes_to_the_nearest_multiple_and_falls_back_down_for_the_target():
    graph, deps = arch_graph("src20"), build_model("src20").deps
    ids = [g.id for g in graph.select("internal")]  # 3 x 16, 3 x 32, 3 x 64
    alive = dict(zip(ids, [13, 11, 4, 20, 28, 31, 36, 45, 60]))
    base = count(graph, deps)[0]

    def ratio(w):
        return count(graph, graph.deps_at(deps, w))[0] / base
    loose, met = round_widths(graph, deps, alive, 8, target=1.0)  # no pressure: the nearest multiples
    assert met and loose == dict(zip(ids, [16, 8, 8, 24, 32, 32, 40, 48, 64]))
    tight, met = round_widths(graph, deps, alive, 8, target=ratio(alive) + 1e-9)
    assert met and ratio(tight) < ratio(alive) + 1e-9
    for gid, w in tight.items():  # no group goes below the multiple under its searched count, or above the nearest
        assert aligned(w, graph.groups[gid].width, 8) and max(8, alive[gid] // 8 * 8) <= w <= loose[gid]
    assert tight[ids[2]] == 8  # searched at 4: grows back to 8, paid for by the others
    assert round_widths(graph, deps, alive, 1, target=0.5) == (alive, True)  # N = 1 changes nothing
    none, met = round_widths(graph, deps, alive, 8)  # no target: never above the searched MACs
    assert met and ratio(none) <= ratio(alive)
    assert round_widths(graph, deps, {ids[0]: 5}, 16, 0.999) == ({ids[0]: 16}, False)  # at most N channels: whole


def test_rounding_drops_the_weakest_kept_filters_and_restores_the_strongest_pruned_ones():
    model, graph = random_model("src20", seed=6), arch_graph("src20")
    down, up = 0, graph.group_of(LAYER).id  # the first residual group (16) and an internal group (16)
    keeps = {down: list(range(13)), up: [1, 5, 9]}  # 13 -> 16 would be nearest; 3 -> 8 must grow
    norms = {g: filter_l1(model, graph.groups[g]) for g in keeps}
    want = sum(model.get_submodule(p.conv).weight.abs().sum((1, 2, 3)).double() for p in graph.groups[down].producers)
    assert len(graph.groups[down].producers) == 4 and torch.allclose(norms[down], want)
    target = count(graph, graph.deps_at(model.deps, {down: 13, up: 3}))[0] / count(graph, model.deps)[0] + 1e-9
    kept, moved, met = round_keeps(model, graph, model.deps, keeps, 8, target)  # 16 and 8 break it: 13 -> 8
    assert met and moved == {down: (13, 8), up: (3, 8)}
    order = sorted(range(13), key=lambda c: norms[down][c].item())
    assert kept[down] == sorted(order[5:])
    pruned = [c for c in range(16) if c not in keeps[up]]
    assert kept[up] == sorted([1, 5, 9] + sorted(pruned, key=lambda c: -norms[up][c].item())[:5])


SMOKE = ["-a", "src20", *SYNTHETIC, "--epochs", "1", "--batch-size", "32",
         "--deterministic", "--max-steps", "40", "--iters-per-half", "1", "--warmup-iters", "0", "--thresh", "1e9",
         "--skip-finetune"]
# a start net with irregular widths, so that the search's halvings leave counts that are not multiples of 8
ODD = {"internal": (11, 21, 45), "residual": (13, 27, 50)}


def odd_base(path):
    graph = arch_graph("src20")
    widths = {g.id: ODD[g.role][int(g.producers[0].conv[len("stage")]) - 1] for g in graph.groups}
    model = random_model("src20", graph.deps_at(build_model("src20").deps, widths), seed=7)
    save_hdf5(path, model.state_dict(), deps=model.deps, arch="src20")
    return model


@pytest.mark.parametrize("groups, round_to", [("all", 1), ("internal,residual,stem", 8)])
def test_do_aofp_searches_residual_groups_and_rounds_widths(tmp_path, groups, round_to):
    model = odd_base(tmp_path / "base.hdf5")
    out = tmp_path / "run"
    target = 0.3
    do_aofp.main([*SMOKE, "--init", str(tmp_path / "base.hdf5"), "-o", str(out), "--groups", groups,
                  "--flops-target", str(target), "--round-to", str(round_to)])
    graph = arch_graph_at("src20", model.deps)
    trained, _, t = read_hdf5(out / "finish.hdf5")
    first = {g.producers[0].conv: g.id for g in graph.groups}
    searched = {first[c] for c in t["decisions"]}
    assert searched == {g.id for g in graph.groups if g.role in ("internal", "residual")}
    state, deps, attrs = read_hdf5(out / "finish_converted.hdf5")
    conv = attrs["conversion"]
    assert conv["max_logit_diff"] < 1e-4 and conv["macs_ratio"] < target, conv
    start, now = graph.widths(model.deps), graph.widths(deps)
    assert any(now[g] < start[g] for g in searched if graph.groups[g].role == "residual")  # a residual sum narrowed
    # the trained file and its decisions give the converted file (restored channels are live in it)
    narrowed, new_deps = narrow(trained, graph, {first[c]: keep_channels([i for (i,) in cl])
                                                 for c, cl in t["decisions"].items()})
    assert new_deps == deps and all(torch.equal(narrowed[k], state[k]) for k in state)
    masked, _, _ = model_from_hdf5(out / "finish.hdf5")  # the plain full-width file is the narrow net
    small, _, _ = model_from_hdf5(out / "finish_converted.hdf5")
    x = example_input("src20", batch=4)
    with torch.no_grad():
        assert (masked(x) - small(x)).abs().max() < 1e-4
    if round_to == 1:
        assert "round_to" not in conv and "searched_metrics" not in conv
        return
    assert all(aligned(now[g], start[g], 8) for g in searched), now
    assert conv["round_to"] == 8 and conv["rounded"] and conv["searched_macs_ratio"] < target
    searched_widths = graph.widths(conv["searched_deps"])
    assert not all(aligned(searched_widths[g], start[g], 8) for g in searched)  # the rounding had work to do
    log = (out / "log.txt").read_text()
    assert "--round-to 8:" in log and "the searched net: top1" in log
    assert t["metrics"] == conv["trained_metrics"] and "searched_metrics" in conv  # the rounded net's, evaluated
