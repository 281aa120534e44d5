"""ResRep's training step against the plain step of the same base model, and the time of one mask
update on sres50 (targets: step ratio at most 1.10 on CPU for src56; a mask update well under 1 s).

    python benchmarks/bench_resrep.py [-a src56] [--steps 10] [--repeats 3] [--batch-size 64]

The ResRep step is the plain step plus the compactors in the forward pass and the gradient reset
after backward, with masks already at the MACs target. Both loops use the same in-memory batches of
cifar10-mini and alternate, so a busy machine slows both alike; medians are compared.
"""
if not __package__:  # run as a file, not as a module: the repository root goes on the path, as with -m
    import os
    import sys
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import json
import os
import statistics
import time

import torch

from base_model import build_model
from benchmarks.timing import seconds_per_step
from rr.compactor import compactor_rule, resrep_model
from rr.resrep import ResRepConfig, ResRepHook, reset_gradients
from utils.command import ArgumentParser, run_main
from utils.training.data import make_loaders
from utils.training.engine import TrainConfig, param_groups


def mask_update_seconds(arch, repeats=5):
    model, graph, groups = resrep_model(arch)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for pg in groups:
            for c in pg.compactors():
                c.pwc.weight.add_(torch.randn(c.pwc.weight.shape, generator=g))
    hook = ResRepHook(graph, model.deps, groups, ResRepConfig(macs_target=0.455, begin_granularity=10**9))
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        hook.update_masks()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main(argv=None):
    p = ArgumentParser(description=__doc__)
    p.add_argument("-a", "--arch", default="src56")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=64)
    args = p.parse_args(argv)
    train, _ = make_loaders("cifar10-mini", None, args.batch_size, "cpu", 0, 1, 0, 0)
    batches = [b for _, b in zip(range(args.steps), train.batches())]
    torch.manual_seed(0)
    plain = build_model(args.arch)
    model, graph, groups = resrep_model(args.arch)
    ResRepHook(graph, model.deps, groups, ResRepConfig(begin_granularity=10**9)).update_masks()
    cfg = TrainConfig(lr=0.01)
    plain_opt = torch.optim.SGD(param_groups(plain, cfg), lr=cfg.lr, momentum=cfg.momentum)
    rr_opt = torch.optim.SGD(param_groups(model, cfg, compactor_rule(groups)), lr=cfg.lr, momentum=cfg.momentum)
    reset = lambda: reset_gradients(groups, 1e-4)  # noqa: E731
    seconds_per_step(plain, plain_opt, batches[:2]), seconds_per_step(model, rr_opt, batches[:2], after_backward=reset)  # warm-up
    p_times, r_times = [], []
    for _ in range(args.repeats):
        p_times.append(seconds_per_step(plain, plain_opt, batches))
        r_times.append(seconds_per_step(model, rr_opt, batches, after_backward=reset))
    result = {"arch": args.arch, "threads": torch.get_num_threads(), "batch": args.batch_size, "steps": len(batches),
              "plain_s_per_step": statistics.median(p_times), "resrep_s_per_step": statistics.median(r_times),
              "sres50_mask_update_s": mask_update_seconds("sres50")}
    result["ratio"] = result["resrep_s_per_step"] / result["plain_s_per_step"]
    print(f"{args.arch} batch {args.batch_size} on cpu ({result['threads']} threads), {len(batches)} steps x "
          f"{args.repeats}: plain {result['plain_s_per_step'] * 1e3:.1f} ms/step, ResRep "
          f"{result['resrep_s_per_step'] * 1e3:.1f} ms/step, ratio {result['ratio']:.3f}; "
          f"sres50 mask update {result['sres50_mask_update_s'] * 1e3:.1f} ms")
    print(json.dumps(result))


if __name__ == "__main__":
    run_main(main)
