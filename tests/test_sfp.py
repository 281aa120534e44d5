"""SFP: the zeroing picks the weakest filters, they stay soft, the small model equals the zeroed one,
ranks agree, a run resumes, bad input is refused, and SFP's FLOPs formula gives the paper's numbers."""
import copy
import os

import pytest
import torch
from helpers import SYNTHETIC, example_input, gloo_group, random_model, script, spawn_ranks

from base_model import build_model
from sfp.convert import kept
from sfp.flops import sfp_cifar_flops, sfp_cifar_reduction
from sfp.method import RECIPES, SFP
from sfp.zeroing import SoftFilterZeroing, choose, num_pruned
from utils.pruning.channel_graph import arch_graph
from utils.pruning.convert import convert
from utils.pruning.zeroing import zero_channels
from utils.tools.store import read_hdf5
from utils.training import dist, skeleton
from utils.training.data import make_loaders
from utils.training.engine import TrainConfig, Trainer, param_groups

do_sfp = script(SFP)


def _rows(model, name):
    return model.get_submodule(name).weight.detach().reshape(model.get_submodule(name).weight.shape[0], -1)


def test_zeroing_picks_the_lowest_summed_norms_and_floors_the_count():
    model, graph = random_model("src20"), arch_graph("src20")
    groups = graph.select("all")
    assert {g.role for g in groups} == {"internal", "residual"} and len(groups) == len(graph.groups)
    pruned = choose(model, groups, 0.7)
    for g in groups:
        norms = sum(_rows(model, p.conv).norm(dim=1) for p in g.producers)  # residual groups: summed
        n = {16: 4, 32: 9, 64: 19}[g.width]  # int(N * 0.3), floored as the original (4.8 -> 4)
        assert num_pruned(g.width, 0.7) == n and len(pruned[g.id]) == n
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


def _batch(seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(8, 3, 32, 32, generator=g), torch.randint(0, 10, (8,), generator=g)


def _sgd_step(model, opt, seed):
    x, y = _batch(seed)
    opt.zero_grad()
    torch.nn.functional.cross_entropy(model(x), y).backward()
    opt.step()


SFP_LR, SFP_MOMENTUM, SFP_WD = 0.1, 0.9, 5e-4  # the CIFAR recipe (specs B2): Nesterov SGD, wd on everything


def _grads(model, seed):
    """The gradient of a separate copy of `model` on batch `seed`: the same state, its own forward/backward."""
    twin = copy.deepcopy(model)
    x, y = _batch(seed)
    torch.nn.functional.cross_entropy(twin(x), y).backward()
    return {name: p.grad.clone() for name, p in twin.named_parameters()}


@pytest.mark.parametrize("bn,reset_momentum", [(False, True), (False, False), (True, True), (True, False)])
def test_zeroed_filters_after_one_step_are_exactly_the_sgd_update(bn, reset_momentum):
    """One Nesterov SGD step on a zeroed row w = 0 with momentum buffer m (0 after a reset) and gradient g:
    buf = 0.9 m + g (weight decay on 0 adds nothing), w = 0 - lr (g + 0.9 buf). bn=False (the default
    training zeroing, conv rows only): the channel still outputs its BN bias, so g != 0 and the filter regrows
    by its gradient even with its momentum reset. bn=True: the channel outputs exactly 0 and g = 0, so only
    the old momentum moves it, and with a reset it stays exactly 0 (hard)."""
    torch.manual_seed(0)
    model, graph = build_model("src20").train(), arch_graph("src20")
    groups = graph.select("all")
    recipe = TrainConfig(**RECIPES["cifar10"])
    opt = torch.optim.SGD(param_groups(model, recipe), lr=recipe.lr, momentum=recipe.momentum)  # as the Trainer
    assert {(g["lr"], g["momentum"], g["nesterov"], g["weight_decay"]) for g in opt.param_groups} == \
        {(SFP_LR, SFP_MOMENTUM, True, SFP_WD)}
    _sgd_step(model, opt, 0)  # momentum in every row, and BN biases off 0
    pruned = choose(model, groups, 0.7)
    convs = {p.conv: pruned[g.id] for g in groups for p in g.producers}
    before = {c: opt.state[model.get_submodule(c).weight]["momentum_buffer"].clone() for c in convs}
    buffers = {c: before[c][rows] for c, rows in convs.items()}
    zero_channels(model, graph, pruned, bn=bn, optimizer=opt if reset_momentum else None)
    for c, rows in convs.items():  # a reset clears the zeroed rows' momentum only
        after = opt.state[model.get_submodule(c).weight]["momentum_buffer"]
        gone = torch.zeros(len(after), dtype=torch.bool)
        gone[rows] = reset_momentum
        assert (after[gone] == 0).all() and torch.equal(after[~gone], before[c][~gone]), c
    grads = _grads(model, 1)
    _sgd_step(model, opt, 1)
    moved, regrew = 0, 0
    for c, rows in convs.items():
        g = grads[f"{c}.weight"][rows]
        m = torch.zeros_like(g) if reset_momentum else buffers[c]
        buf = m.mul(SFP_MOMENTUM).add(g)
        want = torch.zeros_like(g).add(g.add(buf, alpha=SFP_MOMENTUM), alpha=-SFP_LR)
        got = model.get_submodule(c).weight.detach()[rows]
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-12, msg=c)
        if bn:
            assert torch.equal(g, torch.zeros_like(g)), c  # BN weight and bias 0: no gradient reaches the conv
        if not reset_momentum:  # the old momentum term, -lr * 0.9 * 0.9 * m, on top of the gradient-only value
            only_g = torch.zeros_like(g).add(g.add(g, alpha=SFP_MOMENTUM), alpha=-SFP_LR)
            scale = 1e-6 * float(got.abs().max())  # the subtraction cancels: errors of got's own ulp scale
            torch.testing.assert_close(got - only_g, -SFP_LR * SFP_MOMENTUM ** 2 * m, rtol=1e-4, atol=scale, msg=c)
            assert (m.flatten(1).norm(dim=1) > 0).all(), c
        norms = got.flatten(1).norm(dim=1)
        moved, regrew = moved + int((norms > 0).sum()), regrew + int((g.flatten(1).norm(dim=1) > 0).sum())
    total = sum(map(len, convs.values()))
    assert moved == (regrew if reset_momentum else total)  # with a reset, exactly the rows with a gradient move
    if bn:
        assert regrew == 0  # hard: no gradient at all
    else:  # soft: a good part regrows by its gradient (the rest sit behind a ReLU with a negative BN bias)
        assert regrew > total // 4


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


@pytest.mark.parametrize("epoch_prune, epochs, cut", [(1, 2, 1), (2, 3, 2)])
def test_resume_continues_the_zeroing_schedule(tmp_path, epoch_prune, epochs, cut):
    """A run cut at an epoch boundary (--max-steps), then resumed, equals the uninterrupted run; with
    epoch_prune 2 the cut falls after an epoch the schedule does not zero (a cut taken for the last epoch
    would zero there and carry that into the checkpoint)."""
    torch.set_num_threads(1)
    whole, _, m_whole = tiny_run(tmp_path / "whole", epochs=epochs, epoch_prune=epoch_prune)
    first, hook, _ = tiny_run(tmp_path / "cut", epochs=epochs, epoch_prune=epoch_prune,
                              max_steps=cut * whole.steps_per_epoch)
    assert hook.zeroings == whole.hooks[0].zeroings - 1  # the last epoch's zeroing is missing
    again, hook2, m_again = tiny_run(tmp_path / "cut", epochs=epochs, epoch_prune=epoch_prune)  # resumes
    assert hook2.zeroings == whole.hooks[0].zeroings and again.step == whole.step
    for k, v in whole.model.state_dict().items():
        assert torch.equal(v, again.model.state_dict()[k]), k
    assert hook2.pruned == whole.hooks[0].pruned and m_again == m_whole


@pytest.mark.parametrize("epoch_prune,after", [(1, [1, 2, 3, 4, 5]), (2, [1, 3, 5]), (3, [1, 4, 5])])
def test_zeroing_schedule_is_the_originals(tmp_path, epoch_prune, after):
    """The original zeroes before training, then after epoch e (from 0) when e % epoch_prune == 0 or e is the
    last: over 5 epochs, after epochs 1, 3, 5 (1-based) for epoch_prune 2 and 1, 4, 5 for 3. The final "(end)"
    zeroing (BN too, bn="end") comes on top."""
    torch.manual_seed(0)
    cfg = TrainConfig(epochs=5, batch_size=128, lr=0.05, milestones=(), eval_every=1000, eval_last=0,
                      ckpt_every=1000, log_every=1000, deterministic=True, output=str(tmp_path))
    ctx = dist.DistContext()
    train, val = make_loaders("synthetic", None, cfg.batch_size, ctx.device, ctx.rank, ctx.world_size, cfg.seed, 0,
                              image_size=8, num_classes=10)
    hook = SoftFilterZeroing(arch_graph("src20"), epoch_prune=epoch_prune)
    trainer = Trainer(cfg, build_model("src20"), train, val, ctx, hooks=[hook])
    trainer.fit()
    assert trainer.steps_per_epoch == 4 and trainer.step == 20
    lines = [line for line in (tmp_path / "log.txt").read_text().splitlines() if "sfp zeroing" in line]
    whens = [line.split("sfp zeroing ")[1].split(":")[0] for line in lines]
    want = ["(start)", *(f"(after epoch {e})" for e in after), "(end)"]
    assert whens == [f"{i} {w}" for i, w in enumerate(want, start=1)]
    assert hook.zeroings == len(want) and hook.zeroed_step == 20


def _ddp_worker(rank, world, out):
    with gloo_group() as ctx:
        trainer, hook, _ = tiny_run(out, ctx, epochs=1, rate=0.5)
        params = {k: v.detach() for k, v in trainer.model.named_parameters()}  # BN statistics are per rank
        torch.save({"pruned": hook.pruned, "params": params}, os.path.join(out, f"rank{rank}.pt"))


@pytest.mark.slow
def test_two_gloo_processes_zero_the_same_filters(tmp_path, precision):
    spawn_ranks(_ddp_worker, str(tmp_path))
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))
    assert r0["pruned"] == r1["pruned"] and sum(map(len, r0["pruned"].values())) > 0
    for k, v in r0["params"].items():
        assert torch.equal(v, r1["params"][k]), k


def test_do_sfp_writes_an_exact_small_model(tmp_path, capsys):
    out = tmp_path / "run"
    do_sfp.main(["-a", "src20", *SYNTHETIC, "--epochs", "1", "--batch-size", "64", "--max-steps", "3",
                 "--deterministic", "-o", str(out)])
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
    argv = ["-a", "src20", *SYNTHETIC, "-o", str(tmp_path), *argv]
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


def test_the_command_lines_default_keeps_the_training_soft():
    """`python sfp/do_sfp.py` with no --bn-zero: during training only the conv weights of the zeroed filters are
    zeroed (their BN weight and bias keep training, so a filter may regrow, as the original); at the end BN is zeroed
    too, so the zeroed net is exactly the small one. A default of `always` (hard) or `never` fails here."""
    args = skeleton.parse(SFP, ["-a", "src20", "--init", "x.hdf5", "--groups", "internal"])
    SFP.validate(args)
    model = random_model("src20", seed=2)
    graph = arch_graph("src20")
    run = type("Run", (), {"args": args, "graph": graph})
    zeroing = SFP.prepare(run).hook
    pruned = zeroing.apply(model, log=lambda line: None, when=" (after epoch 1)")
    bn_rows = lambda p, idx: (model.get_submodule(p.bn).weight[idx], model.get_submodule(p.bn).bias[idx])
    some = next(g for g in graph.select("internal") if pruned[g.id])
    producer, idx = some.producers[0], pruned[some.id]
    assert model.get_submodule(producer.conv).weight[idx].abs().max() == 0
    assert all(t.abs().min() > 0 for t in bn_rows(producer, idx))  # soft: BN of the zeroed filters untouched
    zeroing.apply(model, log=lambda line: None, when=" (end)", final=True)
    assert all(t.abs().max() == 0 for t in bn_rows(producer, zeroing.pruned[some.id]))  # the end: BN too
