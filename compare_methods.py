"""Compare the four methods and the baselines on one base network: `python compare_methods.py`.

Trains a base network (src20 on the embedded cifar10-mini by default: 5,000 training images and the whole
10,000-image test set), prunes it with ResRep, C-SGD, AOFP and SFP to the same fraction of its MACs
(`--macs-target`, each as close as it allows, all on the internal layers; with `--latency-target F` ResRep
aims at F of the base's latency instead, predicted by a per-layer table measured on the device), runs the
baselines at the same MACs and epochs (L1 pruning + fine-tune, the narrow net from scratch, the base trained
as long), for each seed of `--seeds` and each target, reads every network back from its file, evaluates it, times it (BN
fused) and writes under the output folder (default compare_models/{arch}_{data}/):

    comparison.md    the table (mean ± std over seeds, n), which method beats which baseline, the commands
    comparison.png   top-1 against MACs, a line per method and baseline, error bars; the base as a star
    speedup.png      the measured speed-up against MACs
    comparison.json  every run's numbers, the table's rows, the settings and the command of each stage
    base/            the base;  {resrep,csgd,aofp,sfp,l1,scratch}/macs{T}-seed{S}/, base+/seed{S}/: each stage
    onnx/            with --onnx: every network as ONNX (BN fused), checked in ONNX Runtime (and timed there:
                     the table's ORT columns)

Budgets: `demo` (default on cifar10-mini and synthetic: minutes on a laptop CPU), `paper` (default
otherwise: each method's own recipe, e.g. `--data cifar10 -a src56`), `study` (full CIFAR-10, see
docs/COMPARISON.md; src20 starts from the shipped base), `smoke` (a few steps per stage). A finished stage
is not redone; an interrupted one resumes when the same command is re-run.

This file is orchestration only: it iterates the registry (utils/registry.py), where every method and
baseline is one `Method` (its budget flags, how it meets a MACs target, its footnote); every stage's result is
read from the one file layout all of them write (utils/training/skeleton.py); the aggregation over seeds, the
verdicts and the table are utils/tools/compare.py, the plots utils/tools/plots.py.
"""
import os
import shlex
import sys
import time

import torch

from base_model import default_deps, get_arch
from baselines.plain import BASE, shipped_base
from utils.atomic import write_json, write_text
from utils.command import ArgumentParser, NotFinished, run_main
from utils.pruning.channel_graph import arch_graph
from utils.pruning.flops import count
from utils.registry import REGISTRY, list_methods
from utils.tools.compare import EXACT_TOL, aggregate, report_markdown, verdicts
from utils.tools.export import check_onnx, export_onnx
from utils.tools.latency import ORT, measure
from utils.tools.plots import plot_accuracy, plot_speedup
from utils.tools.store import model_from_hdf5, read_attrs
from utils.training import skeleton
from utils.training.cli import base_weights, check_values
from utils.training.data import make_loaders
from utils.training.dist import resolve_device
from utils.training.engine import TIME_MARGIN_S, evaluate
from utils.training.method import macs_aim
from utils.training.skeleton import converted_file

GROUP_CHOICES = ("internal", "all")  # internal: ResRep's and AOFP's choice; all: the residual stream and stem too
# Every stage of these budgets evaluates its 10,000 test images once, at its end.
QUIET = {b: ["--eval-every", "1000", "--eval-last", "0", "--no-eval-start"] for b in ("demo", "study")}
BUDGETS = ("demo", "paper", "study", "smoke")


def names(text, allowed, flag):
    chosen = [m.strip() for m in text.split(",") if m.strip()]
    bad = [m for m in chosen if m not in allowed]
    if bad:
        raise ValueError(f"{flag} {','.join(bad)}: choose from {', '.join(allowed)}")
    return chosen


def numbers(text, flag, kind=float):
    try:
        return [kind(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ValueError(f"{flag} {text!r}: expected a comma list of numbers") from None


def parse(argv=None):
    methods, baselines = list_methods(), list_methods(baselines=True)
    p = ArgumentParser(description=__doc__)
    p.add_argument("-a", "--arch", default="src20", help="the base network (default %(default)s)")
    p.add_argument("--data", default="cifar10-mini", help="cifar10-mini (embedded; default), cifar10, imagenet, synthetic")
    p.add_argument("--data-root", help="dataset folder or archive (cifar10, imagenet)")
    p.add_argument("--macs-target", default="0.5",
                   help="fraction of the base MACs to keep, or a comma list for a curve, e.g. 0.3,0.5,0.7 (default 0.5)")
    p.add_argument("--latency-target", metavar="F",
                   help="the methods that take one (ResRep) aim at F of the base's latency (batch 64 on --device, "
                        "predicted by a per-layer table measured once and cached) instead of the MACs target; one F "
                        "per --macs-target value, its row stays at that MACs target. The others still aim at "
                        "--macs-target")
    p.add_argument("--budget", choices=BUDGETS, help="demo on cifar10-mini/synthetic, paper otherwise")
    p.add_argument("--groups", choices=GROUP_CHOICES, default="internal",
                   help="channel groups every method and baseline prunes: internal (one conv, one consumer; "
                        "default) or all (the residual-tied groups and the stem too)")
    p.add_argument("--round-to", type=int, default=1, metavar="N",
                   help="every pruned width a multiple of N, in every method and baseline (default 1: any width)")
    p.add_argument("--methods", default=",".join(methods), help=f"comma list (default: {', '.join(methods)})")
    p.add_argument("--baselines", default=",".join(baselines),
                   help=f"comma list, or '' for none (default: {', '.join(baselines)})")
    p.add_argument("--seeds", help="comma list: every pruning and baseline stage once per seed (default: --seed)")
    p.add_argument("--extra", action="append", default=[], metavar="STAGE=FLAGS",
                   help="more flags for one stage's script, after the budget's (later flags win), e.g. "
                        "--extra 'resrep=--epochs 2 --lr 0.02'; stages: base, " + ", ".join(REGISTRY))
    p.add_argument("--init", "--base", dest="init", metavar="FILE",
                   help="an existing base hdf5 to start from (skips training the base; --base: the older spelling)")
    p.add_argument("-o", "--output", help="folder for everything (default compare_models/{arch}_{data})")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--seed", type=int, default=0, help="the base's seed (and the stages' without --seeds)")
    p.add_argument("--onnx", action="store_true",
                   help="also export every network as ONNX, check it in ONNX Runtime and time it there (CPU)")
    p.add_argument("--latency-repeats", type=int, default=20, help="timed passes per latency (median)")
    p.add_argument("--time-limit", type=float, metavar="MINUTES",
                   help="stop at a stage's checkpoint before this many minutes, exit code 3 and 'not finished: run "
                        "the same command again to continue'; re-running continues where it stopped")
    args = p.parse_args(argv)
    get_arch(args.arch)
    args.macs_targets = numbers(args.macs_target, "--macs-target")
    if not args.macs_targets or not all(0 < t < 1 for t in args.macs_targets):
        raise ValueError(f"--macs-target {args.macs_target}: every fraction of the MACs to keep must be in (0, 1)")
    args.latency_targets = None if args.latency_target is None else numbers(args.latency_target, "--latency-target")
    if args.latency_targets is not None and (len(args.latency_targets) != len(args.macs_targets)
                                             or not all(0 < t <= 1 for t in args.latency_targets)):
        raise ValueError(f"--latency-target {args.latency_target}: one fraction of the latency in (0, 1] per "
                         f"--macs-target value ({len(args.macs_targets)})")
    args.seeds = numbers(args.seeds, "--seeds", int) if args.seeds is not None else [args.seed]
    if not args.seeds or len(set(args.seeds)) != len(args.seeds):
        raise ValueError(f"--seeds {','.join(map(str, args.seeds))}: give distinct seeds")
    skeleton.check_round_to(args.round_to)
    if not args.latency_repeats >= 1:
        raise ValueError(f"--latency-repeats {args.latency_repeats}: must be at least 1")
    check_values({"time_limit": args.time_limit, "seed": args.seed})  # the ranges every entry script checks
    args.deadline = None if args.time_limit is None else time.monotonic() + 60 * args.time_limit
    args.methods = names(args.methods, methods, "--methods")
    args.baselines = names(args.baselines, baselines, "--baselines")
    if not args.methods + args.baselines:
        raise ValueError("--methods and --baselines name nothing to run")
    args.extra = parse_extra(args.extra)
    args.budget = args.budget or ("demo" if args.data in ("cifar10-mini", "synthetic") else "paper")
    args.output = args.output or os.path.join("compare_models", f"{args.arch}_{args.data}")
    if args.init and not os.path.isfile(args.init):
        raise FileNotFoundError(f"--init {args.init}: no such file")
    return args


def parse_extra(items):
    """['resrep=--epochs 2', ...] -> {'resrep': ['--epochs', '2'], ...}"""
    extra = {}
    for item in items:
        stage, sep, flags = item.partition("=")
        if not sep or stage not in ("base", *REGISTRY):
            raise ValueError(f"--extra {item!r}: expected STAGE=FLAGS with STAGE one of base, {', '.join(REGISTRY)}")
        extra.setdefault(stage, []).extend(shlex.split(flags))
    return extra


# --- the stages -----------------------------------------------------------------------------------
class Stages:
    """Runs each stage through its method's run skeleton, in its own folder; skips finished ones."""

    def __init__(self, args):
        self.args = args
        self.commands = []
        self.common = ["--data", args.data, "--device", args.device]
        if args.data_root:
            self.common += ["--data-root", args.data_root]
        per_seed = [REGISTRY[n] for n in args.methods + args.baselines]
        self.total = 1 + len(args.seeds) * sum(len(args.macs_targets) if m.per_target else 1 for m in per_seed)
        self.step = 0

    def run(self, method, folder, label, argv, done):
        """Check the stage's flags (nothing written yet; an error names the stage), record its command, run it."""
        self.step += 1
        command = f"python {method.script} {shlex.join(argv)}"
        self.commands.append(command)
        record = os.path.join(folder, "stage_command.txt")
        if os.path.exists(record) and open(record).read().strip() != command:
            raise ValueError(f"{folder} was made by another command:\n  {open(record).read().strip()}\n"
                             f"not\n  {command}\ndelete the folder to redo the stage, or pass another -o")
        if os.path.exists(done):
            print(f"== [{self.step}/{self.total}] {label}: done ({done}; delete it to redo)", flush=True)
            return
        try:
            skeleton.check(method, argv)
        except (ValueError, FileNotFoundError) as e:
            raise type(e)(f"stage {label} ({command}): {e}") from None
        print(f"== [{self.step}/{self.total}] {label}: {command}", flush=True)
        write_text(record, command + "\n")
        t = time.time()
        skeleton.run(method, argv, deadline=self.args.deadline)  # the deadline is not part of the stage's command
        if not os.path.exists(done):
            raise RuntimeError(f"{label} ended without writing {done}")
        print(f"== {label} finished in {time.time() - t:.0f} s", flush=True)

    def base(self):
        a = self.args
        if a.init:
            return a.init
        shipped = shipped_base(a.arch, a.data, a.budget) if a.seed == 0 and not a.extra.get("base") else None
        if shipped:  # the base stage's very recipe at seed 0, trained once and committed
            self.step += 1
            print(f"== [{self.step}/{self.total}] base: the shipped {a.arch} base, {os.path.relpath(shipped)} (trained "
                  f"with the {a.budget} budget's base recipe; its provenance: python display_hdf5.py "
                  f"{os.path.relpath(shipped)}; --init FILE starts from another)", flush=True)
            return shipped
        if a.arch.startswith("sres") and a.budget != "smoke":
            path, make = base_weights(a.arch)  # ImageNet bases come from torchvision, not from training
            if not os.path.isfile(path):
                raise FileNotFoundError(f"{path} (the base model) is missing: make it with `{make}`, or pass --init")
            return path
        out = os.path.join(a.output, "base")
        argv = ["-a", a.arch, "-o", out, *self.common, "--seed", str(a.seed), *QUIET.get(a.budget, []),
                *BASE.budgets[a.budget], *a.extra.get("base", [])]
        path = os.path.join(out, "finish.hdf5")
        self.run(BASE, out, "base", argv, path)
        return path

    def entry(self, method, base, target, seed):
        """Run one method or baseline at one target and seed; its result, read from its files."""
        a = self.args
        out = os.path.join(a.output, method.name, f"macs{target:g}-seed{seed}" if method.per_target else f"seed{seed}")
        flags, aim = (macs_aim(target), f" at {target:.0%}") if method.per_target else ([], "")
        setting = method.solve(a.arch, target, a.groups, a.round_to) if method.solve and method.per_target else None
        if a.latency_targets is not None and method.latency_target and method.per_target:
            latency = a.latency_targets[a.macs_targets.index(target)]  # instead of the MACs target (ResRep)
            out = os.path.join(a.output, method.name, f"latency{latency:g}-seed{seed}")
            flags, aim, setting = ["--latency-target", f"{latency:g}"], f" at {latency:.0%} of the latency", None
        shape = ["--groups", a.groups, *(["--round-to", str(a.round_to)] if a.round_to > 1 else [])]
        argv = ["-a", a.arch, *(["--init", base] if method.from_base else []), *flags,
                *(shape if method.groups else []), "-o", out, *self.common, "--seed", str(seed),
                *QUIET.get(a.budget, []), *method.budgets.get(a.budget, []), *a.extra.get(method.name, [])]
        label = f"{method.label}{aim}, seed {seed}"
        self.run(method, out, label, argv, os.path.join(out, method.done))
        result = {"name": method.name, "label": method.label, "target": target if method.per_target else None,
                  "seed": seed, "baseline": method.baseline, "before_top1": None, "logit_diff": None,
                  "final_file": os.path.join(out, method.final) if method.final else None}
        conversion = {}
        if method.converts:
            result["file"] = converted_file(out)
            conversion = read_attrs(result["file"])["conversion"]
            result.update(before_top1=conversion["trained_metrics"]["top1"], logit_diff=conversion["max_logit_diff"])
        else:
            result["file"], result["final_file"] = result["final_file"], None
        result["note"] = method.note(conversion, setting)
        return result


# --- measuring ------------------------------------------------------------------------------------
def top1_of(path, arch, val, device):
    """The accuracy a file records (its stage evaluated that very network on the whole test set before
    writing it); a file from elsewhere without one (an imported base) is evaluated here."""
    metrics = read_attrs(path).get("metrics")
    if metrics and metrics.get("samples") == val.dataset_size:
        return metrics["top1"]
    return evaluate(model_from_hdf5(path, arch)[0].to(device), val, device)["top1"]


def evaluated_row(result, arch, val, device, base_macs, base_params):
    """Read a network back from its file (for timing), count it, take its accuracy; return (row, model)."""
    model, _, deps = model_from_hdf5(result["file"], arch)
    model = model.to(device)
    top1 = top1_of(result["file"], arch, val, device)
    final = result.get("final_file")
    final_top1 = top1_of(final, arch, val, device) if final else top1
    macs, params = count(arch_graph(arch), deps)
    row = {**result, "deps": deps, "converted_top1": top1, "final_top1": final_top1, "macs": macs, "params": params,
           "macs_ratio": macs / base_macs, "params_ratio": params / base_params}
    if row["logit_diff"] is not None:
        row["exact"] = row["logit_diff"] < EXACT_TOL
    return row, model


def key(row):
    return row["name"] if row["name"] == "base" else f"{row['name']}@{row['target']}#{row['seed']}"


def add_latency(rows, models, arch, device, repeats, onnx=False):
    """Time every network's deploy form, all in turns, and the speed-ups over the base; with `onnx`, in ONNX
    Runtime too (`ort_*`), in the same turns as PyTorch on the CPU."""
    size, cpu = get_arch(arch).input_size, device.type == "cpu"
    ms = measure(models, arch, size, device, (1, 64), repeats, forms=("fused",), onnx=onnx and cpu)
    if onnx and not cpu:  # ONNX Runtime's CPU execution provider: timed on the CPU, in turns with PyTorch there
        for name, on_cpu in measure(models, arch, size, "cpu", (1, 64), repeats, forms=("fused",), onnx=True).items():
            ms[name].update({k: v for k, v in on_cpu.items() if k[3:] == (ORT,)})
    base = ms["base"]
    for row in rows:
        t = ms[key(row)]
        row.update(latency_b1=t[("fused", "float32", 1)], latency_b64=t[("fused", "float32", 64)],
                   speedup_b1=base[("fused", "float32", 1)] / t[("fused", "float32", 1)],
                   speedup_b64=base[("fused", "float32", 64)] / t[("fused", "float32", 64)])
        for b in (1, 64) if onnx else ():
            k = ("fused", "float32", b, ORT)
            row.update({f"ort_latency_b{b}": t[k], f"ort_speedup_b{b}": base[k] / t[k]})


def export_all(rows, arch, folder, val):
    images = next(iter(val.batches()))[0][:8].cpu()
    for row in rows:
        model, _, _ = model_from_hdf5(row.get("final_file") or row["file"], arch)
        path = os.path.join(folder, f"{key(row).replace('@', '-').replace('#', '-seed')}.onnx")
        print(f"   ONNX: {path}", flush=True)
        fused = export_onnx(model, arch, path)
        row["onnx"], row["onnx_diff"] = path, check_onnx(path, fused, images)


def measure_all(args, base, results, device):
    """One row per run (the base's too): accuracies, MACs, params, latency, the conversion proof."""
    arch, spec = args.arch, get_arch(args.arch)
    torch.manual_seed(args.seed)
    _, val = make_loaders(args.data, args.data_root, 100, device, image_size=spec.input_size,
                          num_classes=spec.num_classes)
    base_macs, base_params = count(arch_graph(arch), default_deps(arch))
    print(f"== measuring: every network read back from its file and timed (BN fused, fp32, {device}, "
          f"{torch.get_num_threads()} threads, median of {args.latency_repeats}, in turns)", flush=True)
    base_result = {"name": "base", "label": "base", "target": None, "seed": args.seed, "file": base,
                   "before_top1": read_attrs(base).get("metrics", {}).get("top1"), "logit_diff": None}
    rows, models = [], {}
    for result in [base_result, *results]:
        row, model = evaluated_row(result, arch, val, device, base_macs, base_params)
        rows.append(row)
        models[key(row)] = model
    add_latency(rows, models, arch, device, args.latency_repeats, args.onnx)
    if args.onnx:
        export_all(rows, arch, os.path.join(args.output, "onnx"), val)
    return rows, val.dataset_size


def main(argv=None):
    args = parse(argv)
    start = time.time()
    device = resolve_device(args.device)
    stages = Stages(args)
    base = stages.base()
    results = [stages.entry(REGISTRY[name], base, target, seed)
               for name in args.methods + args.baselines
               for target in (args.macs_targets if REGISTRY[name].per_target else [None])
               for seed in args.seeds]
    if args.deadline is not None and args.deadline - time.monotonic() < TIME_MARGIN_S:
        raise NotFinished("every stage is done; measuring the networks is left")
    runs, test_images = measure_all(args, base, results, device)
    rows = aggregate(runs)
    write_outputs(args, runs, rows, stages.commands, device, test_images, time.time() - start)
    return 0 if all(r.get("exact") is not False for r in runs) else 1


def write_outputs(args, runs, rows, commands, device, test_images, seconds):
    settings = {"arch": args.arch, "data": args.data, "budget": args.budget, "macs_targets": args.macs_targets,
                "seeds": args.seeds, "test_images": test_images, "groups": args.groups, "round_to": args.round_to,
                "latency_targets": args.latency_targets,  # ResRep's, one per MACs target, when given
                "latency": f"{device}, {torch.get_num_threads()} threads, fp32, median of {args.latency_repeats}",
                "date": time.strftime("%Y-%m-%d %H:%M"), "seconds": round(seconds, 1), "torch": torch.__version__}
    notes = list(dict.fromkeys(r["note"] for r in rows if r.get("note")))
    text = report_markdown(rows, settings, notes, commands, onnx=args.onnx)
    out = args.output
    write_text(os.path.join(out, "comparison.md"), text)
    write_json(os.path.join(out, "comparison.json"), {"settings": settings, "rows": rows, "runs": runs,
                                                      "verdicts": verdicts(rows), "commands": commands})
    title = f"{args.arch} on {args.data} ({test_images:,} test images), budget {args.budget}, seeds {args.seeds}"
    plot_accuracy(rows, os.path.join(out, "comparison.png"), title + ": top-1 vs MACs")
    plot_speedup(rows, os.path.join(out, "speedup.png"), title + ": speed-up vs MACs")
    print("\n" + text)
    print(f"wrote {os.path.join(out, 'comparison.md')}, comparison.json, comparison.png and speedup.png in "
          f"{seconds / 60:.1f} min")
    broken = sorted({r["label"] for r in runs if r.get("exact") is False})
    if broken:
        print(f"error: the conversion of {', '.join(broken)} is not exact (logit diff >= {EXACT_TOL:g})", file=sys.stderr)


if __name__ == "__main__":
    run_main(main)
