"""Latency of a network: eval mode, warm-up, median of repeats; fp32 on CPU, also bf16 on CUDA;
as trained (conv+BN) and in the BN-fused deploy form.

    python benchmarks/bench_latency.py resrep_models/src56_train/finish_converted.hdf5 [--base src56_train/finish.hdf5]
    python benchmarks/bench_latency.py -a src56 --deps 16,8,... [--base-deps default]

With a base (a file, or the arch's default widths, which is the default when the arch is known) it
prints the measured speed-up of the model over its base next to the MACs ratio.
"""
import argparse
import copy
import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from base_model import build_model, default_deps, get_arch  # noqa: E402
from utils.channel_graph import arch_graph  # noqa: E402
from utils.dist import resolve_device  # noqa: E402
from utils.flops import count  # noqa: E402
from utils.store import model_from_hdf5  # noqa: E402
from utils.surgery import fuse_bn  # noqa: E402


def load(path=None, arch=None, deps=None):
    """(model, arch, deps) from a weight file, or a randomly initialised arch+deps (latency ignores values)."""
    if path:
        return model_from_hdf5(path, arch)
    return build_model(arch, deps).eval(), arch, list(deps or default_deps(arch))


@torch.no_grad()
def latency_ms(model, batch, size, device, dtype=torch.float32, warmup=5, repeats=20):
    """Median milliseconds per forward pass."""
    model = model.to(device).eval()
    x = torch.randn(batch, 3, size, size, device=device)
    amp = torch.autocast("cuda", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16 and device.type == "cuda")
    times = []
    with amp:
        for i in range(warmup + repeats):
            if device.type == "cuda":
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                model(x)
                end.record()
                torch.cuda.synchronize()
                t = start.elapsed_time(end)
            else:
                t0 = time.perf_counter()
                model(x)
                t = 1000 * (time.perf_counter() - t0)
            if i >= warmup:
                times.append(t)
    return statistics.median(times)


def measure(model, arch, size, device, batches, repeats):
    """{(form, dtype, batch): ms} for the conv+BN and the BN-fused forms."""
    fused = fuse_bn(copy.deepcopy(model), arch_graph(arch))
    dtypes = [torch.float32] + ([torch.bfloat16] if device.type == "cuda" else [])
    out = {}
    for form, m in (("conv+bn", model), ("fused", fused)):
        for dt in dtypes:
            for b in batches:
                out[(form, str(dt).removeprefix("torch."), b)] = latency_ms(m, b, size, device, dt, repeats=repeats)
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("file", nargs="?", help="an hdf5 weight file (its deps give the widths)")
    p.add_argument("-a", "--arch", help="arch (with --deps, instead of a file)")
    p.add_argument("--deps", type=lambda s: [int(x) for x in s.split(",")])
    p.add_argument("--base", help="base hdf5 to compare with (default: the arch's default widths)")
    p.add_argument("--no-base", action="store_true")
    p.add_argument("--batches", default="1,64", type=lambda s: [int(x) for x in s.split(",")])
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    try:
        if not args.file and not args.arch:
            raise ValueError("give an hdf5 file, or -a ARCH [--deps ...]")
        if args.threads:
            torch.set_num_threads(args.threads)
        device = resolve_device(args.device)
        model, arch, deps = load(args.file, args.arch, args.deps)
        size = get_arch(arch).input_size
        rows = {"model": measure(model, arch, size, device, args.batches, args.repeats)}
        macs = {"model": count(arch_graph(arch), deps)[0]}
        if not args.no_base:
            base, _, base_deps = load(args.base, arch, None if args.base else default_deps(arch))
            rows["base"] = measure(base, arch, size, device, args.batches, args.repeats)
            macs["base"] = count(arch_graph(arch), base_deps)[0]
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"{arch} on {device} ({torch.get_num_threads()} threads), input {size}x{size}, median of {args.repeats}")
    print(f"{'form':<8} {'dtype':<9} {'batch':>5} {'model ms':>10}" + (f" {'base ms':>10} {'speed-up':>9}" if "base" in rows else ""))
    result = []
    for key, ms in rows["model"].items():
        line = f"{key[0]:<8} {key[1]:<9} {key[2]:>5} {ms:>10.3f}"
        entry = {"form": key[0], "dtype": key[1], "batch": key[2], "model_ms": ms}
        if "base" in rows:
            b = rows["base"][key]
            line += f" {b:>10.3f} {b / ms:>8.2f}x"
            entry.update(base_ms=b, speedup=b / ms)
        print(line)
        result.append(entry)
    if "base" in macs:
        print(f"MACs {macs['model']:,} vs base {macs['base']:,}: MACs ratio {macs['model'] / macs['base']:.3f} "
              f"(ideal speed-up {macs['base'] / macs['model']:.2f}x)")
    if args.json:
        print(json.dumps({"arch": arch, "deps": deps, "macs": macs, "rows": result}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
