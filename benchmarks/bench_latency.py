"""Latency of a network: eval mode, warm-up, median of repeats; fp32 on CPU, also bf16 on CUDA;
as trained (conv+BN) and in the BN-fused deploy form; with --onnx, the fused form also in ONNX Runtime.

    python benchmarks/bench_latency.py resrep_models/src56_train/finish_converted.hdf5 [--base src56_train/finish.hdf5]
    python benchmarks/bench_latency.py -a src56 --deps 16,8,...            # random weights: latency ignores values
    python benchmarks/bench_latency.py -a src56 --deps 16,8,... --onnx     # + ONNX Runtime rows (CPU, fp32, fused)

Against a base (`--base FILE`, else the arch's default widths; `--no-base` to time the model alone) it
prints, per engine, form, dtype and batch, the measured speed-up next to the MACs ratio. ONNX Runtime (CPU
execution provider, as many intra-op threads as PyTorch's, so both get the same cores) runs the same fused
networks on the same input, in the same turns as PyTorch's fused fp32 passes.
"""
if not __package__:  # run as a file, not as a module: the repository root goes on the path, as with -m
    import os
    import sys
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import json

import torch

from base_model import build_model, default_deps, get_arch
from utils.command import ArgumentParser, run_main
from utils.pruning.channel_graph import arch_graph
from utils.pruning.flops import count
from utils.tools.latency import FORMS, ORT, measure
from utils.tools.store import model_from_hdf5
from utils.training.dist import resolve_device


def load(path=None, arch=None, deps=None):
    """(model, arch, deps) from a weight file, or a randomly initialised arch+deps (latency ignores values)."""
    if path:
        return model_from_hdf5(path, arch)
    return build_model(arch, deps).eval(), arch, list(deps or default_deps(arch))


def parse(argv=None):
    p = ArgumentParser(description=__doc__)
    p.add_argument("file", nargs="?", help="an hdf5 weight file (its deps give the widths)")
    p.add_argument("-a", "--arch", help="arch (with --deps, instead of a file)")
    p.add_argument("--deps", type=lambda s: [int(x) for x in s.split(",")], help="widths (default: the arch's)")
    p.add_argument("--base", help="base hdf5 to compare with (default: the arch's default widths)")
    p.add_argument("--no-base", action="store_true", help="time the model alone")
    p.add_argument("--batches", default="1,64", type=lambda s: [int(x) for x in s.split(",")])
    p.add_argument("--repeats", type=int, default=20, help="timed passes; the median is reported")
    p.add_argument("--warmup", type=int, default=5, help="untimed passes first")
    p.add_argument("--forms", default="conv+bn,fused", type=lambda s: tuple(x for x in s.split(",") if x),
                   help="conv+bn (as trained) and/or fused (BN folded, the deploy form)")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    p.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    p.add_argument("--onnx", action="store_true",
                   help="also time the fused form in ONNX Runtime (CPU execution provider, fp32, PyTorch's threads)")
    p.add_argument("--json", action="store_true", help="also print one JSON object with every number")
    return p.parse_args(argv)


def table(rows, macs):
    """The printed lines: one per (engine, form, dtype, batch), with the measured and the MACs speed-up."""
    has_base = "base" in rows
    lines = [f"{'engine':<11} {'form':<8} {'dtype':<9} {'batch':>5} {'model ms':>10}"
             + (f" {'base ms':>10} {'speed-up':>9} {'MACs ratio':>11}" if has_base else "")]
    entries = []
    for key, ms in sorted(rows["model"].items(), key=lambda kv: len(kv[0])):  # PyTorch's rows, then ORT's
        engine = ORT if key[3:] == (ORT,) else "pytorch"
        line = f"{engine:<11} {key[0]:<8} {key[1]:<9} {key[2]:>5} {ms:>10.3f}"
        entry = {"engine": engine, "form": key[0], "dtype": key[1], "batch": key[2], "model_ms": ms}
        if has_base:
            b = rows["base"][key]
            line += f" {b:>10.3f} {b / ms:>8.2f}x {macs['model'] / macs['base']:>11.3f}"
            entry.update(base_ms=b, speedup=b / ms)
        lines.append(line)
        entries.append(entry)
    if has_base:
        lines.append(f"MACs {macs['model']:,} vs base {macs['base']:,}: MACs ratio {macs['model'] / macs['base']:.3f} "
                     f"(speed-up if time followed MACs: {macs['base'] / macs['model']:.2f}x)")
    return lines, entries


def main(argv=None):
    args = parse(argv)
    if not args.file and not args.arch:
        raise ValueError("give an hdf5 file, or -a ARCH [--deps ...]")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    model, arch, deps = load(args.file, args.arch, args.deps)
    size = get_arch(arch).input_size
    graph = arch_graph(arch)
    models, macs = {"model": model}, {"model": count(graph, deps)[0]}
    if not args.no_base:
        base, _, base_deps = load(args.base, arch, None if args.base else default_deps(arch))
        models["base"], macs["base"] = base, count(graph, base_deps)[0]
    bad = [f for f in args.forms if f not in FORMS]
    if bad or not args.forms:
        raise ValueError(f"--forms {','.join(args.forms)}: choose from {', '.join(FORMS)}")
    rows = measure(models, arch, size, device, args.batches, args.repeats, args.forms, warmup=args.warmup,
                   onnx=args.onnx)
    print(f"{arch} on {device} ({torch.get_num_threads()} threads"
          + (", ONNX Runtime with as many intra-op threads" if args.onnx else "")
          + f"), input {size}x{size}, median of {args.repeats}"
          + (", model and base timed in turns" if "base" in rows else "")
          + (", ONNX Runtime in the same turns as PyTorch's fused fp32 passes" if args.onnx else ""))
    lines, entries = table(rows, macs)
    print("\n".join(lines))
    if args.json:
        print(json.dumps({"arch": arch, "deps": deps, "macs": macs, "rows": entries}))


if __name__ == "__main__":
    run_main(main)
