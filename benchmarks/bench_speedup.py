"""Which pruning shape turns half the MACs into real speed: the channel groups pruned (internal only, or
the residual stream and stem too) and the width alignment (--round-to), at one MACs target.

    python benchmarks/bench_speedup.py -a src56 --runs 3                 # batch 64, fp32, BN fused, CPU
    python benchmarks/bench_speedup.py -a sres50 --runs 3 --repeats 5 --json-out /tmp/sres50.json

For every setting the uniform widths nearest the target (one ratio for every pruned group, as the L1 and
scratch baselines and C-SGD prune) are built with random weights (latency ignores values), BN-fused, and
timed with the base in turns (utils/tools/latency.py). A run is one such round over every network; the
speed-up printed is the median over `--runs` runs of each run's median, with the range of the runs.
"""
if not __package__:  # run as a file, not as a module: the repository root goes on the path, as with -m
    import os
    import sys
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import statistics

import torch

from base_model import build_model, default_deps, get_arch
from utils.atomic import write_json
from utils.command import ArgumentParser, run_main
from utils.pruning.channel_graph import arch_graph
from utils.pruning.flops import count, uniform_ratio
from utils.tools.deploy import deploy_form
from utils.tools.latency import interleaved_ms
from utils.training.dist import resolve_device


def ints(text):
    return [int(x) for x in text.split(",") if x.strip()]


def parse(argv=None):
    p = ArgumentParser(description=__doc__)
    p.add_argument("-a", "--arch", default="src56")
    p.add_argument("--macs-target", type=float, default=0.5, help="fraction of the base MACs (default %(default)s)")
    p.add_argument("--groups", default="internal,all", help="comma list of --groups values (default %(default)s)")
    p.add_argument("--round-to", default="1,8,16", type=ints, help="comma list of N (default %(default)s)")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--runs", type=int, default=3, help="separate timing rounds (default %(default)s)")
    p.add_argument("--repeats", type=int, default=10, help="timed passes per run (median; default %(default)s)")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    p.add_argument("--json-out", help="also write every number here")
    args = p.parse_args(argv)
    get_arch(args.arch)
    if not 0 < args.macs_target < 1:
        raise ValueError(f"--macs-target {args.macs_target}: must be in (0, 1)")
    for flag, value in (("--batch", args.batch), ("--runs", args.runs), ("--repeats", args.repeats)):
        if value < 1:
            raise ValueError(f"{flag} {value}: must be at least 1")
    if not args.round_to or min(args.round_to) < 1:
        raise ValueError(f"--round-to {args.round_to}: every N must be at least 1")
    args.groups = [g for g in args.groups.split(",") if g]
    return args


def settings(arch, target, groups, round_tos):
    """{name: (groups, N, ratio, deps)} of the uniform widths nearest `target` for every setting."""
    graph, base = arch_graph(arch), default_deps(arch)
    graph.select(groups[0])  # a clear error for a bad --groups
    out = {}
    for g in groups:
        for n in round_tos:
            ratio, deps = uniform_ratio(graph, base, g, target, n)
            out[f"{g}/round{n}"] = (g, n, ratio, deps)
    return out


def main(argv=None):
    args = parse(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    arch, graph = args.arch, arch_graph(args.arch)
    chosen = settings(arch, args.macs_target, args.groups, args.round_to)
    base_macs = count(graph, default_deps(arch))[0]
    torch.manual_seed(0)
    models = {"base": deploy_form(build_model(arch), arch)}
    for name, (_, _, _, deps) in chosen.items():
        models[name] = deploy_form(build_model(arch, deps), arch)
    size = get_arch(arch).input_size
    runs = []
    for r in range(args.runs):
        ms = interleaved_ms(models, args.batch, size, device, warmup=args.warmup, repeats=args.repeats)
        runs.append(ms)
        print(f"run {r + 1}/{args.runs}: base {ms['base']:.1f} ms; "
              + ", ".join(f"{k} {ms['base'] / v:.2f}x" for k, v in ms.items() if k != "base"), flush=True)
    print(f"\n{arch}, batch {args.batch}, fp32, BN fused, {device} ({torch.get_num_threads()} threads); "
          f"uniform widths nearest {args.macs_target:g} of the MACs; speed-up = base ms / net ms, median of "
          f"{args.runs} runs (each the median of {args.repeats} passes, every network in turns) [range]")
    print(f"{'setting':<16} {'ratio':>6} {'MACs':>7} {'ms':>9} {'speed-up':>9} {'range':>13}")
    rows = []
    for name, (groups, n, ratio, deps) in chosen.items():
        ups = [run["base"] / run[name] for run in runs]
        macs = count(graph, deps)[0] / base_macs
        row = {"setting": name, "groups": groups, "round_to": n, "ratio": ratio, "deps": deps, "macs_ratio": macs,
               "ms": statistics.median(run[name] for run in runs), "speedups": ups,
               "speedup": statistics.median(ups)}
        rows.append(row)
        print(f"{name:<16} {ratio:>6} {macs:>7.3f} {row['ms']:>9.2f} {row['speedup']:>8.2f}x "
              f"{min(ups):>6.2f}-{max(ups):.2f}x")
    base_ms = statistics.median(run["base"] for run in runs)
    print(f"{'base':<16} {'1':>6} {1:>7.3f} {base_ms:>9.2f} {1:>8.2f}x")
    if args.json_out:
        write_json(args.json_out, {"arch": arch, "batch": args.batch, "device": str(device),
                                   "threads": torch.get_num_threads(), "torch": torch.__version__,
                                   "macs_target": args.macs_target, "base_ms": base_ms, "rows": rows})
    return 0


if __name__ == "__main__":
    run_main(main)
