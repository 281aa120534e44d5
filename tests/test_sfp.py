"""SFP: the zeroing picks the weakest filters, they stay soft, the small model equals the zeroed one,
ranks agree, a run resumes, bad input is refused, and SFP's FLOPs formula gives the paper's numbers."""
import os

import pytest
import torch

from base_model import build_model
from helpers import example_input, gloo_group, random_model, spawn_ranks
from sfp import do_sfp
from sfp.convert import kept
from sfp.flops import sfp_cifar_flops, sfp_cifar_reduction
from sfp.zeroing import SoftFilterZeroing, choose, num_pruned
from utils.pruning.channel_graph import arch_graph
from utils.pruning.convert import convert
from utils.pruning.zeroing import zero_channels
from utils.tools.store import read_hdf5
from utils.training import dist
from utils.training.data import make_loaders
from utils.training.engine import TrainConfig, Trainer


def _rows(model, name):
    return model.get_submodule(name).weight.detach().reshape(model.get_submodule(name).weight.shape[0], -1)


def test_zeroing_picks_the_lowest_summed_norms_and_floors_the_count():
    model, graph = random_model("src20"), arch_graph("src20")
    groups = graph.select("all")
    assert {g.role for g in groups} == {"internal", "residual"} and len(groups) == len(graph.groups)
    pruned = choose(model, groups, 0.7)
    for g in groups:
        norms = sum(_rows(model, p.conv).norm(dim=1) for p in g.producers)  # residual groups: summed
        n = int(g.width * (1 - 0.7))
        assert n == num_pruned(g.width, 0.7) and len(pruned[g.id]) == n
        assert set(pruned[g.id]) == set(torch.topk(norms, n, largest=False).indices.tolist())
    before = {k: v.clone() for k, v in model.state_dict().items()}
    zero_channels(model, graph, pruned)
    after = model.state_dict()
    for g in groups:
        gone = torch.zeros(g.width, dtype=torch.bool)
        gone[pruned[g.id]] = True
        for p in g.producers:
            for name in (f"{p.conv}.weight", f"{p.bn}.weight", f"{p.bn}.bias"):
                assert (after[name][gone] == 0).all() and torch.equal(after[name][~gone], before[name][~gone]), name
            assert torch.equal(after[f"{p.bn}.running_mean"], before[f"{p.bn}.running_mean"])
    # --groups internal: one conv per group; the residual stream stays whole
    internal = graph.select("internal")
    assert internal and all(g.role == "internal" and len(g.producers) == 1 for g in internal)
    assert [len(v) for v in choose(model, internal, 0.5).values()] == [g.width // 2 for g in internal]


def test_faithful_zeroing_leaves_bn_alone():
    model, graph = random_model("vc"), arch_graph("vc")
    groups = graph.select("all")
    bn_before = {k: v.clone() for k, v in model.state_dict().items() if ".bn." in k}
    pruned = choose(model, groups, 0.6)
    zero_channels(model, graph, pruned, bn=False)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in bn_before.items())
    assert all((_rows(model, g.producers[0].conv)[pruned[g.id]] == 0).all() for g in groups)


def _sgd_step(model, opt, seed):
    g = torch.Generator().manual_seed(seed)
    x, y = torch.randn(8, 3, 32, 32, generator=g), torch.randint(0, 10, (8,), generator=g)
    opt.zero_grad()
    torch.nn.functional.cross_entropy(model(x), y).backward()
    opt.step()


@pytest.mark.parametrize("reset_momentum", [False, True])
def test_zeroed_filters_regrow_after_a_step_unless_their_momentum_is_reset(reset_momentum):
    torch.manual_seed(0)
    model, graph = build_model("src20").train(), arch_graph("src20")
    groups = graph.select("all")
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4)
    _sgd_step(model, opt, 0)
    pruned = choose(model, groups, 0.7)
    zero_channels(model, graph, pruned, optimizer=opt if reset_momentum else None)
    _sgd_step(model, opt, 1)
    regrown = [(_rows(model, p.conv)[pruned[g.id]].norm(dim=1) > 0).all().item()
               for g in groups for p in g.producers]
    assert all(regrown) if not reset_momentum else not any(regrown)  # soft: nothing is frozen


@pytest.mark.parametrize("arch,groups", [("src56", "all"), ("src56", "internal"), ("sres18", "all"),
                                         ("sres50", "all"), ("vc", "all")])
def test_small_model_equals_zeroed_model(arch, groups):
    model, graph = random_model(arch), arch_graph(arch)
    chosen = graph.select(groups)
    pruned = choose(model, chosen, 0.7)
    zero_channels(model, graph, pruned)
    conv = convert(model, graph, kept(graph, pruned), lambda deps: build_model(arch, deps), lambda: [example_input(arch)])
    small, deps = conv.model, conv.deps
    for g in graph.groups:
        want = g.width - num_pruned(g.width, 0.7) if g in chosen else g.width
        assert all(deps[i] == want for i in g.deps_indices)
    x = example_input(arch)
    with torch.no_grad():
        diff = (model.eval()(x) - small.eval()(x)).abs().max().item()
    assert diff < 1e-4, diff


def tiny_run(out, ctx=None, epochs=2, max_steps=None, **hook_kw):
    ctx = ctx or dist.DistContext()
    torch.manual_seed(0)
    cfg = TrainConfig(epochs=epochs, batch_size=32, lr=0.05, milestones=(1,), eval_every=1, ckpt_every=1000,
                      log_every=5, deterministic=True, max_steps=max_steps, output=str(out))
    train, val = make_loaders("synthetic", None, cfg.batch_size, ctx.device, ctx.rank, ctx.world_size, cfg.seed, 0,
                              image_size=8, num_classes=10)
    hook = SoftFilterZeroing(arch_graph("src20"), zero_at_start=False, **hook_kw)
    trainer = Trainer(cfg, build_model("src20"), train, val, ctx, hooks=[hook])
    return trainer, hook, trainer.fit()


def test_resume_continues_the_zeroing_schedule(tmp_path):
    torch.set_num_threads(1)
    whole, _, m_whole = tiny_run(tmp_path / "whole")
    first, hook, _ = tiny_run(tmp_path / "cut", max_steps=whole.steps_per_epoch)  # stops after epoch 1
    assert hook.zeroings == whole.hooks[0].zeroings - 1  # epoch 2's zeroing is missing
    again, hook2, m_again = tiny_run(tmp_path / "cut")  # the same command again: resumes
    assert hook2.zeroings == whole.hooks[0].zeroings and again.step == whole.step
    for k, v in whole.model.state_dict().items():
        assert torch.equal(v, again.model.state_dict()[k]), k
    assert hook2.pruned == whole.hooks[0].pruned and m_again == m_whole


def _ddp_worker(rank, world, out):
    with gloo_group() as ctx:
        trainer, hook, _ = tiny_run(out, ctx, epochs=1, rate=0.5)
        params = {k: v.detach() for k, v in trainer.model.named_parameters()}  # BN statistics are per rank
        torch.save({"pruned": hook.pruned, "params": params}, os.path.join(out, f"rank{rank}.pt"))


def test_two_gloo_processes_zero_the_same_filters(tmp_path):
    spawn_ranks(_ddp_worker, str(tmp_path))
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))
    assert r0["pruned"] == r1["pruned"] and sum(map(len, r0["pruned"].values())) > 0
    for k, v in r0["params"].items():
        assert torch.equal(v, r1["params"][k]), k


def test_do_sfp_writes_an_exact_small_model(tmp_path, capsys):
    out = tmp_path / "run"
    do_sfp.main(["-a", "src20", "--data", "synthetic", "--epochs", "1", "--batch-size", "64", "--max-steps", "3",
                 "--device", "cpu", "--deterministic", "-o", str(out)])
    text = capsys.readouterr().out
    assert "sfp zeroing 1 (start)" in text and "sfp zeroing 2 (end)" in text  # stopped mid-epoch: zeroed again
    assert "SFP's idealised formula (option-A ResNet-20" in text and "fewer MACs" in text
    full, deps_full, attrs = read_hdf5(out / "finish.hdf5")
    small, deps, small_attrs = read_hdf5(out / "finish_converted.hdf5")
    assert deps_full == build_model("src20").deps and sum(deps) < sum(deps_full)
    conv = small_attrs["conversion"]
    assert conv["max_logit_diff"] < 1e-4 and attrs["arch"] == "src20" and attrs["conversion"] == conv
    assert small_attrs["metrics"]["top1"] == conv["trained_metrics"]["top1"] == attrs["metrics"]["top1"]
    assert set(attrs["decisions"]) == {g.producers[0].conv for g in arch_graph("src20").groups}
    build_model("src20", deps).load_state_dict(small)  # deps alone rebuild the small net


@pytest.mark.parametrize("argv,match", [
    (["--groups", "projection"], "--groups 'projection'"),
    (["--rate", "0"], "keep ratio"),
    (["--rate", "1.5"], "keep ratio"),
    (["--epoch-prune", "0"], "at least 1"),
    (["--faithful", "--bn-zero", "end"], "contradicts"),
    (["-a", "res56"], "unknown arch"),
    (["--init", "no/such/file.hdf5"], "no such file"),
])
def test_bad_input_is_refused_before_training(argv, match, tmp_path):
    argv = ["-a", "src20", "--data", "synthetic", "-o", str(tmp_path), *argv]
    with pytest.raises((ValueError, FileNotFoundError), match=match):
        do_sfp.main(argv)
    assert not os.listdir(tmp_path)


def test_sfp_flops_formula_matches_the_paper():
    assert sfp_cifar_flops(56) == pytest.approx(1.255e8, rel=1e-3)
    assert sfp_cifar_flops(110) == pytest.approx(2.529e8, rel=1e-3)
    assert [round(100 * sfp_cifar_reduction(56, r), 2) for r in (0.9, 0.8, 0.7, 0.6)] == [14.74, 28.42, 41.06, 52.63]
    assert round(100 * sfp_cifar_reduction(110, 0.6), 2) == 52.31
    # with the floored pruned counts the masks really produce
    assert round(100 * sfp_cifar_reduction(56, 0.6, floored=True), 2) == 50.41
    assert round(100 * sfp_cifar_reduction(56, 0.7, floored=True), 2) == 38.05


def test_default_training_zeroing_regrows_by_gradient_alone():
    # The default (`bn="end"`) zeroes conv weights only while training: a zeroed channel still outputs
    # its BN bias, so with its momentum reset the gradient alone moves it (where that bias is positive).
    torch.manual_seed(0)
    model, graph = build_model("src20").train(), arch_graph("src20")
    groups = graph.select("all")
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=0)
    _sgd_step(model, opt, 0)
    pruned = choose(model, groups, 0.7)
    zero_channels(model, graph, pruned, bn=False, optimizer=opt)
    _sgd_step(model, opt, 1)
    moved = torch.cat([(_rows(model, p.conv)[pruned[g.id]].norm(dim=1) > 0).float()
                       for g in groups for p in g.producers])
    assert 0.2 < moved.mean() < 1.0, moved.mean()
