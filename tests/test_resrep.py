"""ResRep: compactors, gradient resetting, exact conversion, two processes, the entry script (mask selection:
test_resrep_masks.py)."""
import copy
import os
import subprocess
import sys

import pytest
import torch
from helpers import SYNTHETIC, TEST_INPUT, example_input, gloo_group, random_model, script, spawn_ranks
from resrep_helpers import Probe, masked_count, one_thread, perturb_compactors, random_masks, resrep, tiny_trainer  # noqa: F401

from base_model import build_model
from rr.compactor import Compactor, PrunedGroup, compactor_rule, insert_compactors, resrep_model
from rr.convert import convert_state, pruned_row_norm, zero_masked_rows
from rr.masks import select_masks
from rr.method import RESREP
from rr.resrep import ResRepConfig, ResRepHook, reset_gradients
from utils.command import run_main
from utils.pruning.channel_graph import arch_graph_at
from utils.pruning.flops import count
from utils.tools.store import load_hdf5, model_from_hdf5, read_hdf5
from utils.training import dist
from utils.training.cli import base_weights
from utils.training.data import make_loaders
from utils.training.engine import TrainConfig, Trainer, param_groups

exp_resrep = script(RESREP)


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


def test_gradient_reset_inside_a_real_training_step(tmp_path, precision):
    """After one real engine step, the gradient SGD used is m_j * task gradient + lambda * q_j / ||q_j||, with
    the task gradient recomputed here by a separate forward/backward on the same batch and weights, in the
    engine's precision. fp32: equal to round-off (rtol 1e-5). bf16: the engine's forward runs channels_last
    and the reference's does not, so their bf16 convolutions may round differently (measured: 2.6e-7 of the
    largest task gradient, native and AVX2 kernels alike); the kept rows must agree within 1e-4 of it, far
    below what a missing or doubled task gradient would change. The masked rows hold the lasso term alone in
    both settings (fp32 arithmetic)."""
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

    assert trainer.amp == (precision == "bf16")
    ref = resrep("src20", seed=5)[0]  # other weights, then the captured ones: nothing shared with `model`
    ref.load_state_dict(seen["state"])
    ref.train()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=trainer.amp):
        loss = torch.nn.functional.cross_entropy(ref(seen["x"]), seen["y"])
    loss.backward()
    checked_masked = checked_kept = 0
    for path, got in seen["grad"].items():
        q = seen["state"][f"{path}.pwc.weight"]
        mask = seen["state"][f"{path}.mask"].view(-1)
        task = ref.get_submodule(path).pwc.weight.grad
        lasso = lam * q / q.flatten(1).pow(2).sum(1).sqrt().view(-1, 1, 1, 1)
        off, on = mask == 0, mask == 1
        assert torch.allclose(got[off], lasso[off], rtol=1e-5, atol=1e-9), path  # the task gradient is gone
        if precision == "fp32":
            assert torch.allclose(got[on], task[on] + lasso[on], rtol=1e-5, atol=1e-9), path
        else:
            scale = task[on].abs().max()
            assert (got[on] - task[on] - lasso[on]).abs().max() <= 1e-4 * scale, path
            assert (got[on] - lasso[on]).abs().max() > 0.5 * scale, path  # the task gradient is there, once
        checked_masked += int(off.sum())
        checked_kept += int(on.sum())
        if off.any():  # the check has teeth: a masked row's task gradient is far above the tolerance
            assert task[off].abs().max() > 1e-3, path  # ~1e-2 here; the tolerance is ~1e-7
        # and it is the gradient the step used: first SGD step, no weight decay on compactors
        now = model.get_submodule(path).pwc.weight.detach()
        assert torch.allclose(now, q - lr * got, rtol=1e-6, atol=1e-8), path
    assert checked_masked > 20 and checked_kept > 20


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
    hook = ResRepHook(graph, model.deps, groups, ResRepConfig(macs_target=0.5, before_mask_iters=1, mask_interval=1,
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
        hook = ResRepHook(graph, model.deps, groups, ResRepConfig(macs_target=0.3, before_mask_iters=0,
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


@pytest.mark.slow
def test_two_gloo_processes_train_alike_and_choose_the_masks_one_process_would(tmp_path, precision):
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

def script_args(base_file, out, steps=6, *extra):
    return ["-a", "src20", "--init", base_file, *SYNTHETIC, "--epochs", "1", "--batch-size", "32",
            "--max-steps", str(steps), "--before-mask-iters", "0", "--mask-interval", "2", "--begin-granularity", "30",
            "--lasso-strength", "0.01", "--deterministic", "--ckpt-every", "2", "-o", str(out), *extra]


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


@pytest.mark.slow
def test_resumed_run_equals_an_uninterrupted_one(base_file, tmp_path, capsys, precision):
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
    (["--num-at-least", "0"], "--num-at-least 0: must be at least 1"),
    (["--flops-target", "1.5"], "--flops-target 1.5: the fraction of the MACs to keep must be in (0, 1]"),
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
    with pytest.raises(ValueError, match="macs_target: 0.471 -> 0.3"):
        exp_resrep.main(script_args(base_file, tmp_path, 4, "--flops-target", "0.3"))
