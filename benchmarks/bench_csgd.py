"""Step time of C-SGD against plain SGD: the cost of the centripetal update (target: ratio <= 1.05 on CPU).

    python benchmarks/bench_csgd.py [-a src56] [--steps 10] [--repeats 3] [--batch-size 64] [--device cpu]

Both loops run the same model, optimizer (same parameter groups) and in-memory batches of the embedded
cifar10-mini; the C-SGD loop adds the after-backward gradient rewrite on every group the arch's first
iteration slims (src56: all 57 convs, k-means clusters). The two alternate, `--repeats` times each, and
medians are compared, so a machine busy with something else slows both alike. The update is also timed
alone, over the same steps' gradients, which gives the overhead without the noise of whole steps, and its ATen
operations are counted (on a GPU, about one kernel launch each).
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
from benchmarks.timing import seconds_per_step, sync
from csgd.centripetal import CentripetalHook
from csgd.clustering import cluster_groups
from csgd.schedule import default_schedule, group_targets, target_deps
from utils.command import ArgumentParser, run_main
from utils.pruning.channel_graph import arch_graph, arch_graph_at
from utils.training.data import make_loaders
from utils.training.dist import resolve_device
from utils.training.engine import TrainConfig, param_groups


def update_alone(hook, device, repeats=20):
    sync(device)
    t = time.perf_counter()
    for _ in range(repeats):
        hook.apply()
    sync(device)
    return (time.perf_counter() - t) / repeats


def ops_per_update(hook):
    """The ATen operations one update dispatches, views (no kernel) left out: on a GPU each is about one launch."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Count(TorchDispatchMode):
        n = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            Count.n += not func.is_view
            return func(*args, **(kwargs or {}))

    with Count():
        hook.apply()
    return Count.n


def main(argv=None):
    p = ArgumentParser(description=__doc__)
    p.add_argument("-a", "--arch", default="src56")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--device", default="cpu")
    p.add_argument("-o", "--output", help="also write the result as JSON here")
    args = p.parse_args(argv)
    device = resolve_device(args.device)
    train, _ = make_loaders("cifar10-mini", None, args.batch_size, device, 0, 1, 0, 0)
    batches = [b for _, b in zip(range(args.steps), train.batches())]
    torch.manual_seed(0)
    plain_model = build_model(args.arch).to(device)
    csgd_model = build_model(args.arch).to(device)
    csgd_model.load_state_dict(plain_model.state_dict())
    graph = arch_graph_at(args.arch, plain_model.deps)
    target = target_deps(args.arch, arch_graph(args.arch), default_schedule(args.arch), 0)
    state = {k: v.cpu() for k, v in plain_model.state_dict().items()}
    clusters = cluster_groups(state, graph, group_targets(graph, plain_model.deps, target))
    cfg = TrainConfig(lr=0.03, nesterov=True)
    hook = CentripetalHook(graph, clusters, 3e-3, cfg.weight_decay, cfg.bn_weight_decay).bind(csgd_model)
    plain_opt = torch.optim.SGD(param_groups(plain_model, cfg), lr=cfg.lr, momentum=cfg.momentum)
    csgd_opt = torch.optim.SGD(param_groups(csgd_model, cfg, hook.param_rule), lr=cfg.lr, momentum=cfg.momentum)
    seconds_per_step(plain_model, plain_opt, batches[:2], device)
    seconds_per_step(csgd_model, csgd_opt, batches[:2], device, hook.apply)  # warm-up
    plain, csgd = [], []
    for _ in range(args.repeats):
        plain.append(seconds_per_step(plain_model, plain_opt, batches, device))
        csgd.append(seconds_per_step(csgd_model, csgd_opt, batches, device, hook.apply))
    result = {"arch": args.arch, "device": str(device), "threads": torch.get_num_threads(), "batch": args.batch_size,
              "steps": len(batches), "repeats": args.repeats, "clustered_groups": len(clusters),
              "clustered_tensors": len(hook.entries), "plain_s_per_step": statistics.median(plain),
              "csgd_s_per_step": statistics.median(csgd), "update_s": update_alone(hook, device),
              "update_ops": ops_per_update(hook)}
    result["ratio"] = result["csgd_s_per_step"] / result["plain_s_per_step"]
    result["update_ratio"] = 1 + result["update_s"] / result["plain_s_per_step"]
    print(f"{args.arch} batch {args.batch_size} on {device} ({result['threads']} threads), {len(batches)} steps x "
          f"{args.repeats}: plain {result['plain_s_per_step'] * 1e3:.1f} ms/step, C-SGD "
          f"{result['csgd_s_per_step'] * 1e3:.1f} ms/step, ratio {result['ratio']:.3f}; the update alone "
          f"{result['update_s'] * 1e3:.2f} ms over {len(hook.entries)} tensors, "
          f"{result['update_ops']} ATen ops "
          f"(1 + update/plain step = {result['update_ratio']:.4f})")
    print(json.dumps(result))
    if args.output:
        with open(args.output, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    run_main(main)
