"""One GPU check: a training epoch, ResRep's and C-SGD's step against the plain step, and the narrow
networks' latency against the base, printed as one table and written as JSON.

    python benchmarks/gpu_check.py                          # src56 on the GPU, full sizes (a few minutes)
    python benchmarks/gpu_check.py --device cpu --tiny      # the same code, tiny sizes (well under a minute)
    python benchmarks/gpu_check.py -a src110 -o runs/gpu_check --json-out result.json

(a) epoch: one training epoch of CIFAR-10's size (50,000 images, batch 128; the engine drops the last
    partial batch, so 390 steps) through the engine (`Trainer.train_one_epoch`) as every run uses it:
    bf16 autocast where the device computes it natively, channels_last, the progress bar and TensorBoard
    scalars. The images are random uint8, held on the device as one tensor and cropped and flipped there
    (`TensorLoader`, as the real CIFAR path). Goal: at most 5 s on an H100-class GPU.
(b) step: the plain step, ResRep's (compactors on the internal groups, masks already at the MACs target,
    the gradient reset after backward) and C-SGD's (the centripetal update on the groups its first
    iteration slims), each through the engine with its hook, timed in turns; ms/step and the ratio over
    plain. ResRep's mask update, which runs every 200 steps, is timed alone.
(c) latency: the base and two narrow nets at about half the MACs (one uniform width ratio on the internal
    groups, and on all groups), random weights (latency ignores values), BN fused (the deploy form),
    channels_last, bf16 autocast on CUDA (fp32 on the CPU, as utils/tools/latency.py), timed in turns
    pass by pass; median ms per forward pass at batch 1 and 256, and the speed-up over the base.
"""
if not __package__:  # run as a file, not as a module: the repository root goes on the path, as with -m
    import os
    import sys
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import contextlib
import io
import os
import statistics
import sys
import tempfile
import time

import torch

from base_model import build_model, default_deps, get_arch
from benchmarks.timing import sync
from csgd.centripetal import CentripetalHook
from csgd.clustering import cluster_groups
from csgd.schedule import default_schedule, group_targets, target_deps
from rr.compactor import compactor_rule, resrep_model
from rr.resrep import ResRepConfig, ResRepHook
from utils.atomic import write_json
from utils.command import ArgumentParser, run_main
from utils.pruning.channel_graph import arch_graph, arch_graph_at
from utils.pruning.flops import count, uniform_ratio
from utils.tools.deploy import deploy_form
from utils.tools.latency import interleaved_ms
from utils.training.data import TensorLoader
from utils.training.dist import DistContext
from utils.training.engine import TrainConfig, Trainer, resolve_amp

SIZES = {
    "full": {
        "arch": "src56",
        "images": 50_000,  # (a) CIFAR-10's training set
        "batch": 128,  # (a) and (b)
        "epoch_warmup": 20,  # (a) untimed steps first: cuDNN autotuning, allocator, TensorBoard's import
        "steps": 50,  # (b) timed steps per model and repeat
        "repeats": 3,  # (b) the three models take turns this many times; medians
        "latency_batches": (1, 256),  # (c)
        "latency_warmup": 10,  # (c) untimed passes
        "latency_repeats": 50,  # (c) timed passes; the median
    },
    "tiny": {"arch": "src20", "images": 256, "batch": 32, "epoch_warmup": 2, "steps": 3, "repeats": 2,
             "latency_batches": (1, 8), "latency_warmup": 2, "latency_repeats": 5},
}
GOAL_EPOCH_S = 5.0  # (a) on an H100-class GPU, full size
MACS_TARGET = 0.5  # (c) the narrow nets' MACs, as a fraction of the base's
NARROW_GROUPS = ("internal", "all")  # (c) the groups one uniform width ratio narrows
MASK_INTERVAL = ResRepConfig().mask_interval  # (b) steps between ResRep's mask updates
LATENCY_FORM = "fused"  # (c) BN folded into the convs: the deploy form


def parse(argv=None):
    p = ArgumentParser(description=__doc__)
    p.add_argument("--device", default="cuda", help="cuda (default), cuda:N or cpu")
    p.add_argument("--tiny", action="store_true",
                   help=f"tiny sizes ({SIZES['tiny']['arch']}, {SIZES['tiny']['images']} images, a few steps): "
                        "checks the code, not the speed")
    p.add_argument("-a", "--arch", help="a CIFAR arch: src20/32/56/110 or vc (default: src56; src20 with --tiny)")
    p.add_argument("-o", "--output", default=os.path.join("runs", "gpu_check"), help="output folder (default %(default)s)")
    p.add_argument("--json-out", help="the JSON file (default: OUTPUT/gpu_check.json)")
    return p.parse_args(argv)


def check_device(name):
    """The torch device, or a ValueError that says what to run instead."""
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"--device {name}: not a device name; use cuda, cuda:N or cpu") from None
    if device.type not in ("cuda", "cpu"):
        raise ValueError(f"--device {name}: this check runs on cuda or cpu")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"--device {name}: no CUDA GPU is visible on this machine (torch {torch.__version__}, "
                             f"CUDA build {torch.version.cuda}); for a quick check of the same code on the CPU run "
                             "`python benchmarks/gpu_check.py --device cpu --tiny`")
        index = torch.cuda.current_device() if device.index is None else device.index
        if index >= torch.cuda.device_count():
            raise ValueError(f"--device {name}: there are {torch.cuda.device_count()} GPU(s), numbered from 0")
        device = torch.device("cuda", index)
        torch.cuda.set_device(device)
    return device


def check_arch(arch):
    spec = get_arch(arch)  # a clear error for an unknown name
    if spec.dataset != "cifar10":
        raise ValueError(f"-a {arch}: this check trains on CIFAR-sized images (32x32, 10 classes); "
                         "choose src20, src32, src56, src110 or vc")
    return spec


def device_name(device):
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        with open("/proc/cpuinfo") as f:  # Linux: the CPU's model name
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        import platform
        return platform.processor() or platform.machine() or "cpu"


def note(msg):
    print(msg, file=sys.stderr, flush=True)


# --- the engine, timed ----------------------------------------------------------------------------

def synthetic_loader(images, batch, device, seed=0):
    """Random uint8 CIFAR-sized images on the device, cropped and flipped there: the real CIFAR path."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (images, 3, 32, 32), dtype=torch.uint8, generator=g)
    y = torch.randint(0, 10, (images,), generator=g)
    return TensorLoader(x, y, 10, batch, rank=0, world_size=1, seed=seed, device=device, train=True)


def trainer(model, loader, device, folder, hooks=(), param_rule=None):
    """A Trainer as the methods build it; checkpoints are off (a real run writes one every 500 steps)."""
    cfg = TrainConfig(epochs=1, batch_size=loader.batch_size, lr=0.01, ckpt_every=10**9, output=folder)
    with contextlib.redirect_stdout(io.StringIO()):  # the engine's log lines go to its log.txt only
        t = Trainer(cfg, model, loader, loader, DistContext(device=device), hooks, param_rule)
        for h in t.hooks:
            h.on_start(t)
    return t


def timed_epoch(t, steps=None):
    """Seconds of one epoch of the engine (its first `steps` steps), until the device is done."""
    t.step, t.total_steps = 0, steps or t.steps_per_epoch
    sync(t.device)
    start = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        t.train_one_epoch(0)
    sync(t.device)
    return time.perf_counter() - start


def epoch_check(arch, size, device, folder):
    """(a) one training epoch through the engine."""
    torch.manual_seed(0)
    t = trainer(build_model(arch), synthetic_loader(size["images"], size["batch"], device), device, folder)
    timed_epoch(t, min(size["epoch_warmup"], t.steps_per_epoch))
    seconds = timed_epoch(t)
    t.log.close()
    images = t.steps_per_epoch * size["batch"]
    return {"images": size["images"], "batch": size["batch"], "steps": t.steps_per_epoch, "images_trained": images,
            "seconds": seconds, "img_per_s": images / seconds, "precision": "bf16 autocast" if t.amp else "fp32",
            "channels_last": t.channels_last, "data": "random uint8 on the device, crop+flip on the device"}


def step_check(arch, size, device, folder):
    """(b) plain, ResRep and C-SGD steps through the engine, timed in turns."""
    loader = synthetic_loader(size["steps"] * size["batch"], size["batch"], device, seed=1)
    torch.manual_seed(0)
    plain = build_model(arch)
    trainers = {"plain": trainer(plain, loader, device, os.path.join(folder, "plain"))}

    model, graph, groups = resrep_model(arch)
    model.load_state_dict(plain.state_dict(), strict=False)  # the same weights; identity compactors
    hook = ResRepHook(graph, model.deps, groups, ResRepConfig(begin_granularity=10**9, before_mask_iters=10**9))
    trainers["resrep"] = trainer(model, loader, device, os.path.join(folder, "resrep"), [hook], compactor_rule(groups))
    mask_ms = []
    for _ in range(3):  # the masks go straight to the MACs target, then stay: every step resets as in training
        sync(device)
        start = time.perf_counter()
        hook.update_masks()
        sync(device)
        mask_ms.append(1000 * (time.perf_counter() - start))

    csgd_model = build_model(arch)
    csgd_model.load_state_dict(plain.state_dict())
    cgraph = arch_graph_at(arch, csgd_model.deps)
    target = target_deps(arch, arch_graph(arch), default_schedule(arch), 0)
    clusters = cluster_groups({k: v.cpu() for k, v in plain.state_dict().items()}, cgraph,
                              group_targets(cgraph, csgd_model.deps, target))
    cfg = TrainConfig()
    chook = CentripetalHook(cgraph, clusters, 3e-3, cfg.weight_decay, cfg.bn_weight_decay)
    trainers["csgd"] = trainer(csgd_model, loader, device, os.path.join(folder, "csgd"), [chook], chook.param_rule)

    for t in trainers.values():
        timed_epoch(t)  # warm-up
    times = {k: [] for k in trainers}
    for _ in range(size["repeats"]):
        for k, t in trainers.items():
            times[k].append(1000 * timed_epoch(t) / t.steps_per_epoch)
    for t in trainers.values():
        t.log.close()
    ms = {k: statistics.median(v) for k, v in times.items()}
    return {"batch": size["batch"], "steps": size["steps"], "repeats": size["repeats"],
            "precision": "bf16 autocast" if trainers["plain"].amp else "fp32",
            "plain_ms": ms["plain"], "resrep_ms": ms["resrep"], "csgd_ms": ms["csgd"],
            "resrep_ratio": ms["resrep"] / ms["plain"], "csgd_ratio": ms["csgd"] / ms["plain"],
            "resrep_groups": len(groups), "resrep_masked_rows": sum(len(pg.masked()) for pg in groups),
            "resrep_mask_update_ms": statistics.median(mask_ms), "resrep_mask_interval": MASK_INTERVAL,
            "csgd_groups": len(clusters), "csgd_tensors": len(chook.entries)}


# --- latency ---------------------------------------------------------------------------------------

def narrow_nets(arch):
    """{name: (deps, groups, ratio)}: the base and one uniform width ratio at about MACS_TARGET of its MACs."""
    graph, base = arch_graph(arch), default_deps(arch)
    nets = {"base": (list(base), None, "1")}
    for groups in NARROW_GROUPS:
        ratio, deps = uniform_ratio(graph, base, groups, MACS_TARGET)
        if all(deps != d for d, _, _ in nets.values()):  # vc: "all" is "internal"
            nets[f"narrow {groups}"] = (deps, groups, ratio)
    return nets


def latency_check(arch, size, device):
    """(c) the base and the narrow nets, BN fused, timed in turns."""
    graph, dtype = arch_graph(arch), torch.bfloat16 if device.type == "cuda" else torch.float32
    nets, models = narrow_nets(arch), {}
    for name, (deps, _, _) in nets.items():
        torch.manual_seed(0)
        models[name] = deploy_form(build_model(arch, deps), arch).to(device, memory_format=torch.channels_last)
    ms = {name: {} for name in nets}
    for b in size["latency_batches"]:
        for name, v in interleaved_ms(models, b, get_arch(arch).input_size, device, dtype,
                                      size["latency_warmup"], size["latency_repeats"]).items():
            ms[name][str(b)] = v
    base_macs, base_params = count(graph, nets["base"][0])
    out = {}
    for name, (deps, groups, ratio) in nets.items():
        macs, params = count(graph, deps)
        out[name] = {"groups": groups, "width_ratio": ratio, "deps": deps, "macs": macs, "params": params,
                     "macs_ratio": macs / base_macs, "params_ratio": params / base_params, "ms": ms[name],
                     "speedup": {b: ms["base"][b] / v for b, v in ms[name].items()}}
    return {"dtype": str(dtype).removeprefix("torch."), "form": LATENCY_FORM, "memory_format": "channels_last",
            "batches": list(size["latency_batches"]), "warmup": size["latency_warmup"],
            "repeats": size["latency_repeats"], "models": out}


# --- report ----------------------------------------------------------------------------------------

def table(r):
    """The printed lines: a header, then one row per measurement (section, what, value, unit, against)."""
    e, s, lat = r["epoch"], r["steps"], r["latency"]
    goal = ("n/a (the goal is for the full size on a GPU)" if e["goal_met"] is None
            else f"goal <= {e['goal_s']:g} s: {'met' if e['goal_met'] else 'NOT met'}")
    rows = [("(a) epoch", f"{r['arch']}, {e['images']:,} images, batch {e['batch']}, {e['steps']} steps",
             f"{e['seconds']:.2f}", "s", goal),
            ("(a) epoch", "throughput", f"{e['img_per_s']:,.0f}", "img/s", ""),
            ("(b) step", f"plain, batch {s['batch']}", f"{s['plain_ms']:.2f}", "ms/step", "1.00x plain"),
            ("(b) step", f"ResRep ({s['resrep_groups']} groups with compactors)", f"{s['resrep_ms']:.2f}",
             "ms/step", f"{s['resrep_ratio']:.2f}x plain"),
            ("(b) step", f"C-SGD ({s['csgd_groups']} clustered groups, {s['csgd_tensors']} tensors)",
             f"{s['csgd_ms']:.2f}", "ms/step", f"{s['csgd_ratio']:.2f}x plain"),
            ("(b) step", "ResRep mask update", f"{s['resrep_mask_update_ms']:.2f}", "ms",
             f"once every {s['resrep_mask_interval']} steps")]
    for name, m in lat["models"].items():
        what = name if m["groups"] is None else f"{name} (width x{m['width_ratio']})"
        for b in lat["batches"]:
            against = f"{m['speedup'][str(b)]:.2f}x base, MACs {m['macs_ratio']:.3f} of base ({m['macs']:,})"
            rows.append(("(c) latency", f"{what}, batch {b}", f"{m['ms'][str(b)]:.3f}", "ms", against))
    head = ("section", "measurement", "value", "unit", "against")
    widths = [max(len(str(x[i])) for x in rows + [head]) for i in range(5)]

    def line(x):
        return (f"{x[0]:<{widths[0]}}  {x[1]:<{widths[1]}}  {x[2]:>{widths[2]}}  {x[3]:<{widths[3]}}  {x[4]}").rstrip()

    title = (f"gpu_check: {r['arch']} on {r['device']} ({r['device_name']}), torch {r['torch']}"
             + (f", CUDA {r['cuda']}" if r["device"].startswith("cuda") else f", {r['threads']} CPU thread(s)")
             + f"; train: {e['precision']}, channels_last; latency: {lat['dtype']}, BN fused, channels_last, "
             f"median of {lat['repeats']} in turns" + ("; TINY sizes" if r["tiny"] else ""))
    return [title, line(head), "  ".join("-" * w for w in widths)] + [line(x) for x in rows]


def main(argv=None):
    args = parse(argv)
    device = check_device(args.device)
    size = dict(SIZES["tiny" if args.tiny else "full"])
    arch = args.arch or size["arch"]
    check_arch(arch)
    if device.type == "cpu" and not args.tiny:
        note("note: full sizes on a CPU take long (an epoch of 50,000 images); --tiny checks the code quickly")
    json_out = args.json_out or os.path.join(args.output, "gpu_check.json")
    os.makedirs(args.output, exist_ok=True)
    start = time.perf_counter()
    record = {"arch": arch, "device": str(device), "device_name": device_name(device), "torch": torch.__version__,
              "cuda": torch.version.cuda, "threads": torch.get_num_threads(), "tiny": args.tiny,
              "native_bf16_training": resolve_amp(None, device), "sizes": size}
    with tempfile.TemporaryDirectory(prefix="engine_", dir=args.output) as folder:
        note(f"(a) one training epoch of {size['images']:,} images, batch {size['batch']}, through the engine ...")
        record["epoch"] = epoch_check(arch, size, device, os.path.join(folder, "epoch"))
        record["epoch"].update(goal_s=GOAL_EPOCH_S, goal_met=record["epoch"]["seconds"] <= GOAL_EPOCH_S
                               if device.type == "cuda" and not args.tiny else None)
        note(f"(b) plain, ResRep and C-SGD steps, {size['steps']} steps x {size['repeats']} in turns ...")
        record["steps"] = step_check(arch, size, device, folder)
    note(f"(c) latency of the base and the narrow nets at batches {', '.join(map(str, size['latency_batches']))} ...")
    record["latency"] = latency_check(arch, size, device)
    record["total_s"] = time.perf_counter() - start
    lines = table(record)
    record["table"] = lines
    write_json(json_out, record, indent=2)
    print("\n".join(lines))
    print(f"total {record['total_s']:.1f} s; written to {json_out}")


if __name__ == "__main__":
    run_main(main)
