"""A per-layer latency table: what each conv and linear of an arch costs, in ms, at any width in and out, on
this machine, at one batch, measured once and cached.

Layers of one shape share their measurements: a conv is keyed by its kernel, stride, padding, dilation, input
H x W and full widths in and out (a linear by its widths in and out). Each shape is timed as a single layer in
the deploy form (a conv with bias: BN fused away), fp32, eval, no_grad, on a coarse grid of widths (multiples
of max(1, full // 8) on each side that a pruned group can narrow: 8 x 8 points), the grid points in turns,
median of a few repeats; any (in, out) is predicted by bilinear interpolation (linear beyond the grid's first
point). The table is cached as JSON under ~/.cache/pruning-data/latency/, one file per machine (CPU or GPU
model, torch version, threads), arch, batch and device type; when it is measured, the one command that
re-measures it is printed:

    python -m utils.tools.latency_table -a src56 --batch 64 --device cpu

A net's predicted latency is the sum of its layers' predicted latencies. That ignores everything else (adds,
ReLUs, pooling, memory traffic between layers, launch overhead): it is a ranking model, for choosing which
channels to prune, and whoever uses it reports the measured speed-up beside the predicted one.
"""
import bisect
import hashlib
import json
import os
import platform
import statistics
import time
from dataclasses import dataclass

import torch
from torch import nn

from base_model import build_model, default_deps, get_arch
from utils.atomic import write_json
from utils.command import ArgumentParser, run_main
from utils.pruning.channel_graph import arch_graph_at

from .deploy import deploy_form
from .latency import interleaved_ms, ms_timer

CACHE_DIR = os.path.join(os.path.expanduser("~"), ".cache", "pruning-data", "latency")
GRID = 8  # grid points per width that can shrink
REPEATS, WARMUP = 5, 2  # timed passes per grid point (median), after untimed ones


def machine(device):
    """What the timings belong to: the CPU or GPU model, the torch version and the CPU threads."""
    if device.type == "cuda":
        name = f"{torch.cuda.get_device_name(device)} CUDA {torch.version.cuda}"
    else:
        name = platform.processor() or platform.machine()
        try:
            with open("/proc/cpuinfo") as f:
                name = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), name)
        except OSError:
            pass
    return f"{name}; torch {torch.__version__}; {torch.get_num_threads()} threads"


def cache_path(arch, batch, device):
    digest = hashlib.sha1(machine(device).encode()).hexdigest()[:10]
    return os.path.join(CACHE_DIR, f"{arch}-b{batch}-{device.type}-{digest}.json")


def command(arch, batch, device, deps=None):
    return (f"python -m utils.tools.latency_table -a {arch} --batch {batch} --device {device.type}"
            + (f" --deps {','.join(map(str, deps))}" if deps is not None else ""))


# --- shapes -----------------------------------------------------------------------------------------
def layer_specs(arch, deps=None, num_classes=None):
    """{module path: shape spec} of every conv and linear of `arch` at `deps` (the widths the table calls full),
    and the channel graph; input sizes come from one pass on the meta device."""
    deps = list(default_deps(arch) if deps is None else deps)
    graph = arch_graph_at(arch, deps, num_classes)
    with torch.device("meta"):
        model = build_model(arch, deps, num_classes).eval()
        size = get_arch(arch).input_size
        inputs = {}
        for name, m in model.named_modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):  # a pre-hook that returns nothing leaves the input alone
                m.register_forward_pre_hook(lambda m, a, name=name: inputs.update({name: tuple(a[0].shape)}))
        model(torch.empty(1, 3, size, size))
    specs = {}
    for lc in graph.layers:
        m = model.get_submodule(lc.module)
        if lc.kind == "conv":
            spec = dict(kind="conv", kernel=list(m.kernel_size), stride=list(m.stride), padding=list(m.padding),
                        dilation=list(m.dilation), hw=list(inputs[lc.module][2:]), cin=m.in_channels,
                        cout=m.out_channels)
        else:
            spec = dict(kind="linear", block=lc.kernel, cin=m.in_features // lc.kernel, cout=m.out_features)
        specs[lc.module] = dict(spec, vary_in=lc.in_group is not None, vary_out=lc.out_group is not None)
    return specs, graph


def spec_key(s):
    fixed = lambda vary: "" if vary else "="  # noqa: E731 -- a width no pruning changes
    widths = f"{s['cin']}{fixed(s['vary_in'])}->{s['cout']}{fixed(s['vary_out'])}"
    if s["kind"] == "linear":
        return f"linear {widths} block{s['block']}"
    x = lambda v: "x".join(map(str, v))  # noqa: E731
    return (f"conv k{x(s['kernel'])} s{x(s['stride'])} p{x(s['padding'])} d{x(s['dilation'])} "
            f"in{x(s['hw'])} {widths}")


def grid(full, vary):
    if not vary:
        return [full]
    step = max(1, full // GRID)
    return sorted({*range(step, full + 1, step), full})


def make_layer(s, cin, cout):
    if s["kind"] == "linear":
        return nn.Linear(cin * s["block"], cout)
    return nn.Conv2d(cin, cout, s["kernel"], s["stride"], s["padding"], s["dilation"], bias=True)


def layer_input(s, cin, batch, device):
    shape = (batch, cin * s["block"]) if s["kind"] == "linear" else (batch, cin, *s["hw"])
    return torch.randn(shape, device=device)


@torch.no_grad()
def measure_shape(s, batch, device, repeats=REPEATS, warmup=WARMUP):
    """{"cin": grid, "cout": grid, "ms": [[median ms]]} of one shape: the grid points take turns, pass by pass."""
    cins, couts = grid(s["cin"], s["vary_in"]), grid(s["cout"], s["vary_out"])
    layers = {(i, o): make_layer(s, i, o).to(device).eval() for i in cins for o in couts}
    inputs = {i: layer_input(s, i, batch, device) for i in cins}
    timer, times = ms_timer(device), {p: [] for p in layers}
    for r in range(warmup + repeats):
        for (i, o), layer in layers.items():
            t = timer(lambda: layer(inputs[i]))
            if r >= warmup:
                times[(i, o)].append(t)
    return {"cin": cins, "cout": couts, "ms": [[statistics.median(times[(i, o)]) for o in couts] for i in cins]}


def _cell(xs, x):
    """(i, w): x = (1 - w) * xs[i] + w * xs[i + 1], in the grid's nearest cell (so linear beyond its ends)."""
    if len(xs) == 1:
        return 0, 0.0
    i = min(max(bisect.bisect_right(xs, x) - 1, 0), len(xs) - 2)
    return i, (x - xs[i]) / (xs[i + 1] - xs[i])


def interpolate(entry, cin, cout):
    """Bilinear in the grid of one shape: the measured value at a grid point; never negative."""
    (i, u), (j, v), ms = _cell(entry["cin"], cin), _cell(entry["cout"], cout), entry["ms"]
    at = lambda a, b: ms[min(a, len(ms) - 1)][min(b, len(ms[0]) - 1)]  # noqa: E731
    value = (1 - u) * (1 - v) * at(i, j) + u * (1 - v) * at(i + 1, j) + (1 - u) * v * at(i, j + 1) \
        + u * v * at(i + 1, j + 1)
    return max(value, 0.0)


@dataclass
class LatencyTable:
    shapes: dict  # {shape key: {"spec", "cin", "cout", "ms"}}
    layers: dict  # {module path: shape key}
    path: str
    command: str  # the command that re-measures it
    measured: bool  # measured now rather than read from the cache

    def layer_ms(self, lc, widths):
        """Predicted ms of one LayerCost of the channel graph at {group id: width}."""
        cin = lc.in_fixed if lc.in_group is None else widths[lc.in_group]
        cout = lc.out_fixed if lc.out_group is None else widths[lc.out_group]
        return interpolate(self.shapes[self.layers[lc.module]], cin, cout)

    def predict(self, graph, deps):
        """Predicted ms of the net with widths `deps`: the sum of its convs' and linears' (a ranking model)."""
        widths = graph.widths(deps)
        return sum(self.layer_ms(lc, widths) for lc in graph.layers)


def latency_table(arch, batch, device, deps=None, num_classes=None, repeats=REPEATS, remeasure=False):
    """The table of `arch` at `deps` (default: its own widths) on `device`: read from the cache, the shapes it
    lacks (or all, with `remeasure`) measured and written back, with the command that re-measures it printed."""
    device = torch.device(device)
    specs, _ = layer_specs(arch, deps, num_classes)
    path = cache_path(arch, batch, device)
    shapes = {}
    if os.path.isfile(path) and not remeasure:
        with open(path) as f:
            shapes = json.load(f)["shapes"]
    layers = {m: spec_key(s) for m, s in specs.items()}
    missing = {k: specs[m] for m, k in layers.items() if k not in shapes}
    again = command(arch, batch, device, None if deps is None or list(deps) == default_deps(arch) else deps)
    if missing:
        start = time.time()
        with torch.random.fork_rng(devices=[torch.cuda.current_device()] if device.type == "cuda" else []):
            for k, s in missing.items():
                shapes[k] = {"spec": s, **measure_shape(s, batch, device, repeats)}
        write_json(path, {"machine": machine(device), "arch": arch, "batch": batch, "device": device.type,
                          "repeats": repeats, "shapes": shapes})
        print(f"latency table: {len(missing)} layer shapes of {arch} measured at batch {batch} on {device} "
              f"({machine(device)}) in {time.time() - start:.0f} s -> {path}\n  re-measure with: {again}", flush=True)
    return LatencyTable(shapes, layers, path, again, bool(missing))


def main(argv=None):
    p = ArgumentParser(description=__doc__)
    p.add_argument("-a", "--arch", required=True)
    p.add_argument("--batch", type=int, default=64, help="batch size (default %(default)s)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--deps", help="comma-separated conv widths of the full net (default: the arch's)")
    p.add_argument("--repeats", type=int, default=REPEATS, help="timed passes per grid point (default %(default)s)")
    args = p.parse_args(argv)
    if args.batch < 1 or args.repeats < 1:
        raise ValueError(f"--batch {args.batch}, --repeats {args.repeats}: both must be at least 1")
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          "cpu" if args.device == "auto" else args.device)
    deps = None if args.deps is None else [int(x) for x in args.deps.split(",")]
    table = latency_table(args.arch, args.batch, device, deps, repeats=args.repeats, remeasure=True)
    model = build_model(args.arch, deps)
    graph = arch_graph_at(args.arch, model.deps)
    measured = interleaved_ms({"net": deploy_form(model, args.arch)}, args.batch, get_arch(args.arch).input_size,
                              device)["net"]
    print(f"{args.arch}: {len(table.shapes)} shapes for {len(table.layers)} layers; at batch {args.batch} on "
          f"{device}: predicted {table.predict(graph, model.deps):.2f} ms (the sum of the layers'), measured "
          f"{measured:.2f} ms (the whole net, BN fused, median of 20)")


if __name__ == "__main__":
    run_main(main)
