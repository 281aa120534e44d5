"""C-SGD: clustering, the centripetal update, exact merging, iterations, DDP, resume, schedules, bad input."""
import copy
import os
import random

import pytest
import torch
from helpers import SYNTHETIC, example_input, random_model, script, spawn_ranks

from base_model import build_model
from csgd.centripetal import CentripetalHook, clustered_tensors
from csgd.clustering import ClusteringError, check_clusters, cluster_groups, even_clusters, kmeans
from csgd.method import CSGD
from csgd.schedule import default_schedule, target_deps
from utils.command import run_main
from utils.pruning.channel_graph import PRUNABLE_ROLES, arch_graph, arch_graph_at
from utils.pruning.convert import convert
from utils.pruning.flops import count
from utils.pruning.surgery import merge
from utils.tools.store import read_hdf5, save_hdf5
from utils.training import dist
from utils.training.data import make_loaders
from utils.training.engine import TrainConfig, Trainer, param_groups

do_csgd = script(CSGD)

SMOKE = [*SYNTHETIC, "--batch-size", "32", "--lr", "0.1", "--milestones", "", "--eval-every", "100",
         "--deterministic"]


# --- clustering -----------------------------------------------------------------------------------
def test_kmeans_is_seeded_finds_planted_clusters_and_never_leaves_one_empty():
    g = torch.Generator().manual_seed(0)
    centers = torch.randn(5, 20, generator=g) * 5
    x = centers[torch.arange(40) % 5] + 0.1 * torch.randn(40, 20, generator=g)
    assert kmeans(x, 5, seed=3) == [[i for i in range(40) if i % 5 == j] for j in range(5)]
    y = torch.randn(64, 30, generator=g)
    assert kmeans(y, 13, seed=1) == kmeans(y, 13, seed=1)
    dup = torch.zeros(10, 4)  # fewer distinct filters than clusters: still a partition into non-empty ones
    dup[5:] = 1
    clusters = kmeans(dup, 7)
    check_clusters(clusters, 10)
    assert len(clusters) == 7


def test_even_split_is_the_papers():
    assert even_clusters(10, 4) == [[0, 1, 2], [3, 4, 5], [6, 7], [8, 9]]
    assert even_clusters(3, 3) == [[0], [1], [2]]


def test_residual_groups_are_clustered_from_all_their_convs():
    model = build_model("src20")
    graph = arch_graph_at("src20", model.deps)
    group = graph.by_role("residual")[0]
    state = {k: v.clone() for k, v in model.state_dict().items()}
    for p in group.producers:
        state[f"{p.conv}.weight"].zero_()
    planted = state[f"{group.producers[-1].conv}.weight"]  # only the last conv of the sum tells the filters apart
    for i in range(group.width):
        planted[i] = 10.0 * (i % 4)
    clusters = cluster_groups(state, graph, {group.id: 4})[group.id]
    assert clusters == [[i for i in range(group.width) if i % 4 == j] for j in range(4)]


def test_bad_clusterings_and_targets_are_refused():
    graph = arch_graph_at("src20", build_model("src20").deps)
    state = build_model("src20").state_dict()
    with pytest.raises(ClusteringError, match=r"target width 20 is wider than the layer \(16 channels\)"):
        cluster_groups(state, graph, {1: 20})
    with pytest.raises(ClusteringError, match="must be a positive integer"):
        cluster_groups(state, graph, {1: 0})
    with pytest.raises(ClusteringError, match="unknown clustering method 'spectral'"):
        cluster_groups(state, graph, {1: 8}, method="spectral")
    with pytest.raises(ClusteringError, match="cluster 1 is empty"):
        check_clusters([[0, 1], [], [2]], 3)
    with pytest.raises(ClusteringError, match="channel 1 is in two clusters"):
        check_clusters([[0, 1], [1, 2]], 3)
    with pytest.raises(ClusteringError, match=r"channels \[2\] are in no cluster"):
        check_clusters([[0, 1]], 3)


# --- the update -----------------------------------------------------------------------------------
def random_clusters(width, rng):
    order = list(range(width))
    rng.shuffle(order)
    cuts = sorted(rng.sample(range(1, width), rng.randint(1, width - 1)))
    return [sorted(order[a:b]) for a, b in zip([0, *cuts], [*cuts, width])]


def sgd_with_hook(model, hook, cfg):
    hook.bind(model)
    return torch.optim.SGD(param_groups(model, cfg, hook.param_rule), lr=cfg.lr, momentum=cfg.momentum)


def step(model, opt, grads, hook=None):
    for p, g in zip(model.parameters(), grads):
        p.grad = g.clone()
    if hook is not None:
        hook.apply()
    opt.step()


def rows_mean(hook, name, w):
    return next(e[1] for e in hook.entries if e[4] == name).mean(w)


@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_update_alone_collapses_clusters_geometrically_and_means_follow_sgd(momentum):
    torch.manual_seed(0)
    rng = random.Random(0)
    model = build_model("src20")
    graph = arch_graph_at("src20", model.deps)
    clusters = {g.id: random_clusters(g.width, rng) for g in graph.groups if g.role != "output"}
    eps, lr, steps = 2.0, 0.1, 20
    cfg = TrainConfig(lr=lr, momentum=momentum, nesterov=momentum > 0, weight_decay=1e-3)
    hook = CentripetalHook(graph, clusters, eps, cfg.weight_decay, cfg.bn_weight_decay)
    with torch.no_grad():  # BN affines away from 1/0, so their clusters start spread too
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5), m.bias.normal_()
    opt = sgd_with_hook(model, hook, cfg)
    # The reference: every filter at its cluster's mean, trained by plain SGD (with L2) on the mean gradient.
    ref = copy.deepcopy(model)
    with torch.no_grad():
        for name, p in ref.named_parameters():
            if name in hook.names:
                p.copy_(rows_mean(hook, name, p))
    ref_opt = torch.optim.SGD(param_groups(ref, cfg), lr=lr, momentum=momentum)
    names = [n for n, _ in model.named_parameters()]
    start = {n: (p - rows_mean(hook, n, p)).detach().clone() for n, p in model.named_parameters() if n in hook.names}
    g = torch.Generator().manual_seed(1)
    for _ in range(steps):
        grads = [torch.randn(p.shape, generator=g) for p in model.parameters()]
        step(model, opt, grads, hook)
        mean_grads = [rows_mean(hook, n, gr) if n in hook.names else gr for n, gr in zip(names, grads)]
        step(ref, ref_opt, mean_grads)
    # The deviation of each tensor is its start deviation times a scalar: that of the 1-D recursion
    # x <- x - lr_t (wd + eps) x through the same optimizer (exactly (1 - lr (wd + eps))^t without momentum).
    def factor(c, lr_factor):
        x = torch.ones(1, requires_grad=True)
        o = torch.optim.SGD([x], lr=lr * lr_factor, momentum=momentum, nesterov=momentum > 0)
        for _ in range(steps):
            x.grad = c * x.detach()
            o.step()
        return x.item()

    kernel_factor = factor(cfg.weight_decay + eps, 1.0)
    if momentum == 0:
        assert kernel_factor == pytest.approx((1 - lr * (cfg.weight_decay + eps)) ** steps)
    assert abs(kernel_factor) < 0.05
    for n, p in model.named_parameters():
        if n not in hook.names:
            continue
        dev = p - rows_mean(hook, n, p)
        f = kernel_factor if p.dim() > 1 else factor(0.1 * eps, 2.0 if n.endswith("bias") else 1.0)
        assert torch.allclose(dev, f * start[n], atol=1e-6), n
    for (n, p), q in zip(model.named_parameters(), ref.parameters()):
        target = rows_mean(hook, n, p) if n in hook.names else p
        assert torch.allclose(target, q, atol=1e-5), n


def test_singleton_clusters_are_plain_sgd_and_weight_decay_moves_into_the_update():
    torch.manual_seed(0)
    model = build_model("src20")
    graph = arch_graph_at("src20", model.deps)
    clusters = {g.id: [[i] for i in range(g.width)] for g in graph.groups if g.role != "output"}
    cfg = TrainConfig(lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-2)
    hook = CentripetalHook(graph, clusters, 0.3, cfg.weight_decay, cfg.bn_weight_decay)
    plain = copy.deepcopy(model)
    opt, plain_opt = sgd_with_hook(model, hook, cfg), torch.optim.SGD(param_groups(plain, cfg), lr=0.1, momentum=0.9)
    assert all(g["weight_decay"] == 0 for g in opt.param_groups if set(g["names"]) & hook.names)
    g = torch.Generator().manual_seed(2)
    for _ in range(5):
        grads = [torch.randn(p.shape, generator=g) for p in model.parameters()]
        step(model, opt, grads, hook)
        step(plain, plain_opt, grads)
    for a, b in zip(model.parameters(), plain.parameters()):
        assert torch.allclose(a, b, atol=1e-6)


def test_weight_decay_is_turned_off_by_exact_name_only():
    # The original matched by substring: pruning the sres50 stem `conv1` would have dropped the L2 of
    # every `stageX.blockY.conv1`.
    model = build_model("sres50")
    graph = arch_graph("sres50")
    stem = graph.by_role("stem")[0]
    hook = CentripetalHook(graph, {stem.id: even_clusters(stem.width, 32)}, 0.05)
    wd = {n: g["weight_decay"] for g in param_groups(model, TrainConfig(), hook.param_rule) for n in g["names"]}
    assert wd["conv1.conv.weight"] == 0 and wd["stage1.block0.conv1.conv.weight"] == 1e-4
    assert {n for _, n, _ in clustered_tensors(graph, hook.clusters)} >= {"conv1.bn.weight", "conv1.bn.bias"}


# --- conversion -----------------------------------------------------------------------------------
@pytest.mark.parametrize("arch, itr", [("src56", 2), ("sres50", 2), ("vc", 2)])
def test_identical_filters_convert_exactly(arch, itr):
    model = random_model(arch)
    graph = arch_graph_at(arch, model.deps)
    target = target_deps(arch, graph, default_schedule(arch), itr)
    targets = {g.id: target[g.producers[0].index] for g in graph.groups if target[g.producers[0].index] != g.width}
    state = {k: v.clone() for k, v in model.state_dict().items()}
    # k-means on src56; the even split keeps the 512-filter layers of sres50 and vc fast
    clusters = cluster_groups(state, graph, targets, "kmeans" if arch == "src56" else "even")
    if arch == "src56":
        assert {graph.groups[g].role for g in clusters} == {"internal", "residual"}
    for gid, cs in clusters.items():  # what C-SGD converges to: the members of a cluster are equal
        for p in graph.groups[gid].producers:
            keys = [f"{p.conv}.weight"] + [f"{p.bn}.{k}" for k in ("weight", "bias", "running_mean", "running_var")]
            for key in keys:
                for c in cs:
                    state[key][c] = state[key][c[0]].clone()
    model.load_state_dict(state)
    x = example_input(arch)
    decisions = {g: merge(c) for g, c in clusters.items()}
    conv = convert(model, graph, decisions, lambda deps: build_model(arch, deps), lambda: [x])
    narrow_model, info = conv.model, conv.info
    assert narrow_model.deps == target
    with torch.no_grad():
        before, after = model.eval()(x), narrow_model(x)
    assert before.abs().max() > 1e-2
    # float32 round-off grows with sres50's logit scale (~70); in float64 the identity is plain to see
    assert (before - after).abs().max().item() < max(1e-4, 1e-5 * before.abs().max().item())
    narrow64 = convert(model.double(), graph, decisions, lambda deps: build_model(arch, deps), lambda: [x.double()]).model
    with torch.no_grad():
        assert (model(x.double()) - narrow64(x.double())).abs().max().item() < 1e-9
    assert info["macs_after"] == count(arch_graph(arch), target)[0]


def test_schedule_macs_match_the_originals_tables():
    # ../shared/specs/csgd.md section 2.2 (src56: the 'fixed' column, 1x1 projections counted as 1x1).
    tables = {
        "src56": [(125_747_840, 855_770), (83_080_712, 565_757), (59_530_680, 405_635), (49_224_080, 335_540)],
        "sres50": [(4_089_184_256, 25_557_032), (2_629_867_579, 17_021_126), (2_213_085_584, 14_601_827),
                   (1_822_031_872, 12_381_864), (1_491_355_323, 10_451_225), (1_184_923_876, 8_713_982)],
    }
    for arch, rows in tables.items():
        graph, schedule = arch_graph(arch), default_schedule(arch)
        got = [count(graph, build_model(arch).deps)] + [count(graph, target_deps(arch, graph, schedule, i))
                                                          for i in range(len(schedule.ratios))]
        assert got == rows, arch
    deps = target_deps("sres50", arch_graph("sres50"), default_schedule("sres50"), 0)
    assert deps[:14] == [64, 256, 45, 45, 256, 45, 45, 256, 45, 45, 256, 512, 90, 90]
    assert default_schedule("src56").groups == "all" and default_schedule("sres50").groups == "internal"
    assert {g.role for g in arch_graph("src56").select(default_schedule("src56").groups)} <= set(PRUNABLE_ROLES)


# --- iterations, end to end -----------------------------------------------------------------------
def csgd(argv, capsys=None):
    with pytest.raises(SystemExit) as e:
        run_main(lambda: do_csgd.main(argv))
    return e.value.code


def test_iterations_chain_convert_within_the_deviation_and_are_not_redone(fresh_base_file, tmp_path, capsys):
    models = str(tmp_path / "m")
    # eps 5 at lr 0.1: the kernels of a cluster collapse within the 40 steps; the BN running statistics
    # follow at the BN momentum, so they are what is left, and the logits match within that.
    argv = ["-a", "src20", "--init", fresh_base_file, "--models-dir", models, *SMOKE, "--epochs", "2",
            "--max-steps", "40", "--batch-size", "16", "--eps", "5"]
    result = do_csgd.run([*argv, "-i", "0"])
    itr0 = os.path.join(models, "src20_train", "itr0")
    state, deps, attrs = read_hdf5(os.path.join(itr0, "finish_converted.hdf5"))
    info = attrs["conversion"]
    dev = info["max_deviation"]
    assert dev["kernel"] < 1e-6 and dev["bn_weight"] < 1e-6 and dev["bn_stats"] < 1e-2, dev
    assert info["raw_logit_diff"] < max(1e-4, 10 * max(dev.values())), (info["raw_logit_diff"], dev)
    assert info["max_logit_diff"] < 1e-4  # the merge itself, against the cluster-averaged net
    assert info["converted_metrics"]["top1"] == pytest.approx(info["trained_metrics"]["top1"], abs=1.0)
    assert result.conversion.deps == deps == [13] * 7 + [26] * 7 + [52] * 7
    out = capsys.readouterr().out
    assert "max |logit difference| trained vs converted" in out and "cluster-averaged" in out and "MACs 40,813,184 -> 27,010,568" in out
    assert read_hdf5(os.path.join(itr0, "finish.hdf5"))[1] == [16] * 7 + [32] * 7 + [64] * 7
    assert {"clusters.json", "log.txt", "checkpoint.pth"} <= set(os.listdir(itr0))
    assert csgd([*argv, "-i", "0"]) == 0
    assert "C-SGD itr0 is already done" in capsys.readouterr().out
    # -i 1 starts from itr0's converted model (no --init)
    argv1 = ["-a", "src20", "-i", "1", "--models-dir", models, *SMOKE, "--epochs", "1", "--max-steps", "2"]
    result1 = do_csgd.run(argv1)
    assert result1.model.deps == deps and result1.conversion.deps == [11] * 7 + [22] * 7 + [44] * 7
    # itr 1 reports against itr 0's widths and against the unpruned src20 (the original reported the former only)
    graph, info1 = arch_graph("src20"), result1.conversion.info
    macs1, base = count(graph, result1.conversion.deps)[0], count(graph, build_model("src20").deps)[0]
    assert info1["macs_before"] == count(graph, deps)[0] and info1["macs_base"] == base == 40_813_184
    assert info1["macs_ratio"] == macs1 / info1["macs_before"] and info1["macs_ratio_to_base"] == macs1 / base
    assert "of the unpruned 40,813,184 MACs and 272,474 params" in capsys.readouterr().out


def test_a_missing_previous_iteration_names_the_command(tmp_path, capsys):
    code = csgd(["-a", "src20", "-i", "2", "--models-dir", str(tmp_path), *SMOKE])
    err = capsys.readouterr().err
    assert code == 2 and "run `python csgd/do_csgd.py -a src20 -i 1` first" in err, err


@pytest.mark.parametrize("argv, needle", [
    (["-a", "src57", "-i", "0"], "unknown arch 'src57'"),
    (["-a", "src20", "-i", "3"], "-i 3: the schedule has iterations 0..2"),
    (["-a", "src20", "-i", "0", "--ratios", "0.5,1.5"], "every ratio must be in (0, 1]"),
    (["-a", "src20", "-i", "0", "--ratios", "a/b"], "expected fractions like 13/16"),
    (["-a", "src20", "-i", "0", "--init", "/nonexistent.hdf5"], "--init /nonexistent.hdf5: no such file"),
    (["-a", "sres50", "-i", "0"], "make it with `python transform_torchvision.py`"),
    (["-a", "src20", "-i", "0", "--no-train-base"], "make it with `python train_base_model.py -a src20`"),
])
def test_bad_input_gives_one_error_line(argv, needle, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # no base model here
    code = csgd([*argv, "--models-dir", str(tmp_path), "--device", "cpu"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error:") and needle in err, err
    assert len(err.strip().splitlines()) == 1


def test_a_wider_target_is_refused(fresh_base_file, tmp_path, capsys):
    narrow = build_model("src20", [8] * 21)
    path = tmp_path / "narrow.hdf5"
    save_hdf5(path, narrow.state_dict(), deps=narrow.deps, arch="src20")
    code = csgd(["-a", "src20", "-i", "0", "--init", str(path), "--models-dir", str(tmp_path), *SMOKE])
    err = capsys.readouterr().err
    assert code == 2 and "target width 13 is wider than the layer (8 channels)" in err, err


# --- resume and DDP -------------------------------------------------------------------------------
def hooked_run(out, clusters, max_steps):
    torch.manual_seed(0)
    model = build_model("src20")
    graph = arch_graph_at("src20", model.deps)
    cfg = TrainConfig(epochs=1, batch_size=32, lr=0.1, nesterov=True, max_steps=max_steps, deterministic=True,
                      eval_every=100, output=str(out))
    hook = CentripetalHook(graph, clusters, 0.5)
    train, val = make_loaders("synthetic", None, cfg.batch_size, "cpu", 0, 1, cfg.seed, 0, num_classes=10)
    trainer = Trainer(cfg, model, train, val, dist.DistContext(), hooks=[hook], param_rule=hook.param_rule)
    trainer.fit()
    return trainer.model.state_dict(), hook


def test_resume_continues_with_the_runs_own_clusters(tmp_path):
    graph = arch_graph_at("src20", build_model("src20").deps)
    kmeans_like = {g.id: even_clusters(g.width, g.width * 3 // 4)[::-1] for g in graph.by_role("internal")}
    other = {g.id: even_clusters(g.width, g.width // 2) for g in graph.by_role("internal")}
    whole, _ = hooked_run(tmp_path / "whole", kmeans_like, 4)
    hooked_run(tmp_path / "split", kmeans_like, 2)
    resumed, hook = hooked_run(tmp_path / "split", other, 4)  # resuming adopts the checkpoint's clusters
    assert hook.clusters == kmeans_like
    for k in whole:
        assert torch.equal(whole[k], resumed[k]), k


def _ddp_worker(rank, world, base, out):
    # Each rank is given another k-means seed: the clusters must still be rank 0's.
    argv = ["-a", "src20", "-i", "0", "--init", base, "--models-dir", out, *SMOKE, "--epochs", "1",
            "--max-steps", "2", "--cluster-seed", str(rank)]
    result = do_csgd.run(argv)
    torch.save({"clusters": result.setup.hook.clusters, "state": result.model.state_dict()},
               os.path.join(out, f"rank{rank}.pt"))


@pytest.mark.slow
def test_two_gloo_processes_share_clusters_and_weights(fresh_base_file, tmp_path, precision):
    spawn_ranks(_ddp_worker, fresh_base_file, str(tmp_path))
    a, b = (torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in (0, 1))
    assert a["clusters"] == b["clusters"]
    for k in a["state"]:
        assert torch.equal(a["state"][k], b["state"][k]), k
    assert os.path.exists(tmp_path / "src20_train" / "itr0" / "finish_converted.hdf5")


@pytest.mark.parametrize("channels_last", [False, True])
def test_the_gathered_update_is_the_per_tensor_formula(channels_last):
    """The gathered update (every clustered tensor in one vector) computes Gamma (G - eps W) + (wd + eps) W for each
    tensor, writes it into the gradient it was given (in its memory format), and fills a missing one."""
    torch.manual_seed(0)
    rng = random.Random(1)
    model = build_model("src20")
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    graph = arch_graph_at("src20", model.deps)
    clusters = {g.id: random_clusters(g.width, rng) for g in graph.groups if g.role != "output"}
    hook = CentripetalHook(graph, clusters, 0.3, 1e-3, 1e-4, vector_factor=0.5).bind(model)
    for p in model.parameters():
        p.grad = torch.randn_like(p)
    missing = hook.entries[1][0]
    missing.grad = None
    expected = {name: rows.mean((w.grad if w.grad is not None else torch.zeros_like(w)) - eps * w) + decay * w
                for w, rows, eps, decay, name in hook.entries}
    pointers = {name: w.grad.data_ptr() for w, _, _, _, name in hook.entries if w.grad is not None}
    hook.apply()
    for w, _, _, _, name in hook.entries:
        torch.testing.assert_close(w.grad, expected[name], rtol=1e-6, atol=1e-6)
        assert name not in pointers or w.grad.data_ptr() == pointers[name]  # written in place
        if w.dim() == 4:
            assert w.grad.is_contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
