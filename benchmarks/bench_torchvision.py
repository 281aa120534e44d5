"""torchvision's CNNs at half their MACs by L1 (one uniform ratio over every prunable group): the groups found,
MACs and params before and after, and the CPU speed-up at batch 1 and 64 in the BN-fused fp32 deploy form, in
PyTorch and in ONNX Runtime, the full and the pruned network timed in turns (utils/tools/latency.py).

    python benchmarks/bench_torchvision.py                       # every family in NETS, at 224 pixels (Inception 299)
    python benchmarks/bench_torchvision.py --nets resnet18,mobilenet_v2 --repeats 5 --out tv_speed.json

Random weights: latency does not depend on them, and L1 on random filters picks a valid half like any other.
Prints one markdown row per network (docs/TORCHVISION.md's table) and writes every number to --out.
"""
if not __package__:  # run as a file, not as a module: the repository root goes on the path, as with -m
    import os
    import sys
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import os
import time
from collections import Counter
from fractions import Fraction

import torch

from base_model import build_model, default_deps, get_arch
from utils.command import ArgumentParser, run_main
from utils.pruning.channel_graph import arch_graph
from utils.pruning.flops import count, uniform_deps, uniform_ratio
from utils.tools.latency import ORT, measure

# One light network per family: at batch 64 on 2 CPU cores ResNet-18 (1.8 GMACs a picture) takes 2.5 minutes
# here, so ResNet-50, ResNeXt-50, Inception-V3, EfficientNetV2-S, Wide-ResNet and VGG (3 to 11 GMACs) are
# left to --nets.
NETS = ("resnet18", "mobilenet_v2", "mobilenet_v3_large", "mnasnet1_0", "efficientnet_b0", "regnet_x_400mf",
        "regnet_y_400mf", "googlenet", "squeezenet1_1", "densenet121")


def half_by_l1(arch):
    """(ratio, deps): the uniform keep ratio over every prunable group whose MACs come nearest half."""
    graph, full = arch_graph(arch), default_deps(arch)
    ratio, deps = uniform_ratio(graph, full, "all", 0.5)
    return ratio, uniform_deps(graph, full, "all", Fraction(ratio))


def bench(name, batches, repeats, warmup):
    arch = f"tv:{name}"
    graph, full = arch_graph(arch), default_deps(arch)
    ratio, deps = half_by_l1(arch)
    torch.manual_seed(0)
    models = {"base": build_model(arch).eval(), "pruned": build_model(arch, deps).eval()}
    size = get_arch(arch).input_size
    t0 = time.perf_counter()
    ms = measure(models, arch, size, "cpu", batches, repeats, ("fused",), warmup=warmup, onnx=True)
    (m0, p0), (m1, p1) = count(graph, full), count(graph, deps)
    speed = {f"{engine} b{b}": ms["base"][key] / ms["pruned"][key]
             for b in batches for engine, key in (("pytorch", ("fused", "float32", b)),
                                                  ("onnxruntime", ("fused", "float32", b, ORT)))}
    return {"arch": arch, "size": size, "ratio": ratio, "groups": dict(Counter(g.role for g in graph.groups)),
            "macs": [m0, m1], "params": [p0, p1], "deps": deps, "speedup": speed, "seconds": time.perf_counter() - t0,
            "ms": {k: {" ".join(map(str, key)): v for key, v in rows.items()} for k, rows in ms.items()}}


def markdown(r, batches):
    groups = ", ".join(f"{n} {role}" for role, n in sorted(r["groups"].items()))
    cells = [f"`{r['arch']}`", groups, f"{r['ratio']}", f"{r['macs'][0] / 1e6:,.0f} M -> {r['macs'][1] / 1e6:,.0f} M",
             f"{r['params'][0] / 1e6:.2f} M -> {r['params'][1] / 1e6:.2f} M",
             *[f"{r['speedup'][f'{e} b{b}']:.2f}x" for b in batches for e in ("pytorch", "onnxruntime")]]
    return "| " + " | ".join(cells) + " |"


def main(argv=None):
    p = ArgumentParser(description=__doc__)
    p.add_argument("--nets", default=",".join(NETS), help="torchvision model names, comma-separated")
    p.add_argument("--batches", default="1,64", type=lambda s: [int(x) for x in s.split(",")])
    p.add_argument("--repeats", type=int, default=3, help="timed passes per model and engine (median)")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--out", help="a JSON file for every number")
    args = p.parse_args(argv)
    results = []
    head = ["network", "groups", "L1 ratio", "MACs", "params",
            *[f"{e} b{b}" for b in args.batches for e in ("PyTorch", "ORT")]]
    print(f"CPU: {torch.get_num_threads()} threads; fp32, BN fused; the full and pruned nets timed in turns, median of "
          f"{args.repeats}", flush=True)
    print("| " + " | ".join(head) + " |\n|" + "---|" * len(head), flush=True)
    for name in args.nets.split(","):
        r = bench(name.strip(), args.batches, args.repeats, args.warmup)
        results.append(r)
        print(markdown(r, args.batches), flush=True)
        if args.out:
            from utils.atomic import write_json

            write_json(args.out, {"threads": torch.get_num_threads(), "repeats": args.repeats, "results": results,
                                  "cpu": os.popen("grep -m1 'model name' /proc/cpuinfo").read().strip()})


if __name__ == "__main__":
    run_main(main)
