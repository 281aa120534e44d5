"""Compare the four methods on one base network at one MACs target: `python compare_methods.py`.

Trains a base network (src20 on the embedded cifar10-mini by default), prunes it with ResRep, C-SGD,
AOFP and SFP to the same fraction of its MACs (`--macs-target`, each method as close as it allows,
all on the internal layers), converts each to a physically narrower network through each method's own
entry script, reads every converted file back, evaluates it, times it (BN fused) and writes under the
output folder (default compare_models/{arch}_{data}/):

    comparison.md    the table: accuracy before/after conversion, MACs, params, latency, logit diff
    comparison.png   top-1 against MACs, one point per method and the base
    comparison.json  every number, the settings and the command of each stage
    base/ resrep/ csgd/ aofp/ sfp/   each stage's own folder (finish.hdf5 and finish_converted.hdf5, log.txt, ...)
    onnx/            with --onnx: every network as ONNX (BN fused), checked in ONNX Runtime

Budgets: `demo` (default on cifar10-mini and synthetic: minutes on a laptop CPU), `paper` (default
otherwise: each method's own recipe, e.g. `--data cifar10 -a src56`), `smoke` (a few steps per stage).
A finished stage is not redone; an interrupted one resumes when the same command is re-run.

This file is orchestration only: what each method knows (its demo flags, how it meets a MACs target,
its footnote) is its package's comparison.py (`utils.tools.compare.Entry`); every stage's result is read
from the one file layout all methods write (utils/training/skeleton.py).
"""
import argparse
import os
import shlex
import sys
import time

import torch

import train_base_model
from aofp.comparison import ENTRY as AOFP
from base_model import default_deps, get_arch
from csgd.comparison import ENTRY as CSGD
from rr.comparison import ENTRY as RESREP
from sfp.comparison import ENTRY as SFP
from utils.atomic import write_json, write_text
from utils.command import run_main
from utils.pruning.channel_graph import arch_graph
from utils.pruning.flops import count
from utils.tools.compare import EXACT_TOL, plot, report_markdown
from utils.tools.latency import measure
from utils.tools.store import model_from_hdf5, read_attrs
from utils.training.cli import base_weights
from utils.training.data import make_loaders
from utils.training.dist import resolve_device
from utils.training.engine import evaluate
from utils.training.skeleton import converted_file

ENTRIES = {e.name: e for e in (RESREP, CSGD, AOFP, SFP)}  # a new row: its package's comparison.py, and here
METHODS = tuple(ENTRIES)
GROUPS = "internal"  # every method prunes the internal layers only (ResRep's and AOFP's choice)
# The base's flags per budget (the methods' own are in their Entry). `demo` is sized for src20 on
# cifar10-mini (78 steps of 64 images an epoch): 10 base epochs, then 6 epochs per method.
BASE_BUDGETS = {"paper": [], "demo": ["--epochs", "10"], "smoke": ["--epochs", "1", "--max-steps", "3"]}
BUDGETS = ("demo", "paper", "smoke")


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-a", "--arch", default="src20", help="the base network (default %(default)s)")
    p.add_argument("--data", default="cifar10-mini", help="cifar10-mini (embedded; default), cifar10, imagenet, synthetic")
    p.add_argument("--data-root", help="dataset folder or archive (cifar10, imagenet)")
    p.add_argument("--macs-target", type=float, default=0.5, help="fraction of the base MACs to keep (default %(default)s)")
    p.add_argument("--budget", choices=BUDGETS, help="demo on cifar10-mini/synthetic, paper otherwise")
    p.add_argument("--methods", default=",".join(METHODS), help="comma list (default: all four)")
    p.add_argument("--extra", action="append", default=[], metavar="STAGE=FLAGS",
                   help="more flags for one stage's script, after the budget's (later flags win), e.g. "
                        "--extra 'resrep=--epochs 2 --lr 0.02'; stages: base, " + ", ".join(METHODS))
    p.add_argument("--base", help="an existing base hdf5 (skips training the base)")
    p.add_argument("-o", "--output", help="folder for everything (default compare_models/{arch}_{data})")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--onnx", action="store_true", help="also export every network as ONNX and check it in ONNX Runtime")
    p.add_argument("--latency-repeats", type=int, default=20, help="timed passes per latency (median)")
    args = p.parse_args(argv)
    get_arch(args.arch)
    if not 0 < args.macs_target < 1:
        raise ValueError(f"--macs-target {args.macs_target}: the fraction of the MACs to keep must be in (0, 1)")
    if not args.latency_repeats >= 1:
        raise ValueError(f"--latency-repeats {args.latency_repeats}: must be at least 1")
    args.methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    bad = [m for m in args.methods if m not in METHODS]
    if bad or not args.methods:
        raise ValueError(f"--methods {','.join(bad) or '(none)'}: choose from {', '.join(METHODS)}")
    args.extra = parse_extra(args.extra)
    args.budget = args.budget or ("demo" if args.data in ("cifar10-mini", "synthetic") else "paper")
    args.output = args.output or os.path.join("compare_models", f"{args.arch}_{args.data}")
    if args.base and not os.path.isfile(args.base):
        raise FileNotFoundError(f"--base {args.base}: no such file")
    return args


def parse_extra(items):
    """['resrep=--epochs 2', ...] -> {'resrep': ['--epochs', '2'], ...}"""
    extra = {}
    for item in items:
        stage, sep, flags = item.partition("=")
        if not sep or stage not in ("base", *METHODS):
            raise ValueError(f"--extra {item!r}: expected STAGE=FLAGS with STAGE one of base, {', '.join(METHODS)}")
        extra.setdefault(stage, []).extend(shlex.split(flags))
    return extra


# --- the stages -----------------------------------------------------------------------------------
class Stages:
    """Runs each stage through its entry script's main, in its own folder; skips finished ones."""

    def __init__(self, args):
        self.args = args
        self.commands = []
        self.common = ["--data", args.data, "--device", args.device, "--seed", str(args.seed)]
        if args.data_root:
            self.common += ["--data-root", args.data_root]

    def folder(self, name):
        return os.path.join(self.args.output, name)

    def run(self, name, label, script, argv, done, main, step):
        command = f"python {script} {shlex.join(argv)}"
        self.commands.append(command)
        total = 1 + len(self.args.methods)
        record = os.path.join(self.folder(name), "stage_command.txt")
        if os.path.exists(record) and open(record).read().strip() != command:
            raise ValueError(f"{self.folder(name)} was made by another command:\n  {open(record).read().strip()}\n"
                             f"not\n  {command}\ndelete the folder to redo the stage, or pass another -o")
        if os.path.exists(done):
            print(f"== [{step}/{total}] {label}: done ({done}; delete it to redo)", flush=True)
            return
        print(f"== [{step}/{total}] {label}: {command}", flush=True)
        write_text(record, command + "\n")
        t = time.time()
        main(argv)
        if not os.path.exists(done):
            raise RuntimeError(f"{label} ended without writing {done}")
        print(f"== {label} finished in {time.time() - t:.0f} s", flush=True)

    def base(self):
        a = self.args
        if a.base:
            return a.base
        if a.arch.startswith("sres") and a.budget != "smoke":
            path, make = base_weights(a.arch)  # ImageNet bases come from torchvision, not from training
            if not os.path.isfile(path):
                raise FileNotFoundError(f"{path} (the base model) is missing: make it with `{make}`, or pass --base")
            return path
        out = self.folder("base")
        argv = ["-a", a.arch, "-o", out, *self.common, *BASE_BUDGETS[a.budget], *a.extra.get("base", [])]
        path = os.path.join(out, "finish.hdf5")
        self.run("base", "base", "train_base_model.py", argv, path, train_base_model.main, 1)
        return path

    def method(self, entry, base, step):
        """Run one method from the base to the MACs target; its result, read from its converted file."""
        a, out = self.args, self.folder(entry.name)
        flags, setting = entry.aim(a.arch, a.macs_target, GROUPS)
        argv = ["-a", a.arch, "--init", base, *flags, "--groups", GROUPS, "-o", out, *self.common,
                *entry.budgets.get(a.budget, []), *a.extra.get(entry.name, [])]
        self.run(entry.name, entry.label, entry.script, argv, os.path.join(out, entry.done), entry.main, step)
        path = converted_file(out)
        conversion = read_attrs(path)["conversion"]
        return {"file": path, "final_file": os.path.join(out, entry.final) if entry.final else None,
                "before_top1": conversion["trained_metrics"]["top1"], "logit_diff": conversion["max_logit_diff"],
                "note": entry.note(conversion, setting)}


# --- measuring ------------------------------------------------------------------------------------
def evaluated_row(name, path, arch, val, device, base_macs, base_params):
    """Read a network back from its file, evaluate it and count it; return (row, model)."""
    label = ENTRIES[name].label if name in ENTRIES else name
    model, _, deps = model_from_hdf5(path, arch)
    model = model.to(device)
    top1 = evaluate(model, val, device)["top1"]
    macs, params = count(arch_graph(arch), deps)
    return {"name": name, "label": label, "file": path, "deps": deps, "converted_top1": top1, "macs": macs,
            "params": params, "macs_ratio": macs / base_macs, "params_ratio": params / base_params}, model


def add_latency(rows, models, arch, device, repeats):
    """Time every network's deploy form, all in turns, and the speed-ups over the base."""
    ms = measure(models, arch, get_arch(arch).input_size, device, (1, 64), repeats, forms=("fused",))
    base = ms["base"]
    for row in rows:
        t = ms[row["name"]]
        row.update(latency_b1=t[("fused", "float32", 1)], latency_b64=t[("fused", "float32", 64)],
                   latency={f"{k[0]} {k[1]} b{k[2]}": v for k, v in t.items()},
                   speedup_b1=base[("fused", "float32", 1)] / t[("fused", "float32", 1)],
                   speedup_b64=base[("fused", "float32", 64)] / t[("fused", "float32", 64)])


def export_all(rows, files, arch, folder, val):
    from utils.tools.export import check_onnx, export_onnx

    images = next(iter(val.batches()))[0][:8].cpu()
    for row in rows:
        model, _, _ = model_from_hdf5(files[row["name"]], arch)
        path = os.path.join(folder, f"{row['name']}.onnx")
        print(f"   ONNX: {path}", flush=True)
        fused = export_onnx(model, arch, path)
        row["onnx"], row["onnx_diff"] = path, check_onnx(path, fused, images)


def measure_all(args, base, results, device):
    """Rows for the base and each method: accuracies, MACs, params, latency, the conversion proof."""
    arch, spec = args.arch, get_arch(args.arch)
    torch.manual_seed(args.seed)
    _, val = make_loaders(args.data, args.data_root, 100, device, image_size=spec.input_size,
                          num_classes=spec.num_classes)
    base_macs, base_params = count(arch_graph(arch), default_deps(arch))
    print(f"== measuring: evaluating every converted file anew and timing it (BN fused, {device}, "
          f"{torch.get_num_threads()} threads, median of {args.latency_repeats}, the networks in turns)", flush=True)
    row, model = evaluated_row("base", base, arch, val, device, base_macs, base_params)
    row.update(before_top1=read_attrs(base).get("metrics", {}).get("top1"), final_top1=row["converted_top1"],
               logit_diff=None, exact=None)
    rows, models, files = [row], {"base": model}, {"base": base}
    for m, r in results.items():
        row, models[m] = evaluated_row(m, r["file"], arch, val, device, base_macs, base_params)
        final = r.get("final_file")
        row["final_top1"] = evaluate(model_from_hdf5(final, arch)[0].to(device), val, device)["top1"] \
            if final else row["converted_top1"]
        row.update(before_top1=r["before_top1"], logit_diff=r["logit_diff"], exact=r["logit_diff"] < EXACT_TOL,
                   note=r["note"])
        rows.append(row)
        files[m] = final or r["file"]
    add_latency(rows, models, arch, device, args.latency_repeats)
    if args.onnx:
        export_all(rows, files, arch, os.path.join(args.output, "onnx"), val)
    return rows


def main(argv=None):
    args = parse(argv)
    start = time.time()
    device = resolve_device(args.device)
    stages = Stages(args)
    base = stages.base()
    results = {m: stages.method(ENTRIES[m], base, i) for i, m in enumerate(args.methods, start=2)}
    rows = measure_all(args, base, results, device)
    write_outputs(args, rows, stages.commands, device, time.time() - start)
    return 0 if all(r["exact"] is not False for r in rows) else 1


def write_outputs(args, rows, commands, device, seconds):
    settings = {"arch": args.arch, "data": args.data, "budget": args.budget, "macs_target": args.macs_target,
                "latency": f"{device}, {torch.get_num_threads()} threads, fp32, median of {args.latency_repeats}",
                "date": time.strftime("%Y-%m-%d %H:%M"), "seconds": round(seconds, 1), "torch": torch.__version__}
    notes = [r["note"] for r in rows if r.get("note")]
    text = report_markdown(rows, settings, notes, commands, onnx=args.onnx)
    out = args.output
    write_text(os.path.join(out, "comparison.md"), text)
    write_json(os.path.join(out, "comparison.json"), {"settings": settings, "rows": rows, "commands": commands})
    plot(rows, os.path.join(out, "comparison.png"),
         f"{args.arch} on {args.data}, budget {args.budget}: top-1 vs MACs", args.macs_target)
    print("\n" + text)
    print(f"wrote {os.path.join(out, 'comparison.md')}, comparison.json and comparison.png in {seconds / 60:.1f} min")
    broken = [r["label"] for r in rows if r["exact"] is False]
    if broken:
        print(f"error: the conversion of {', '.join(broken)} is not exact (logit diff >= {EXACT_TOL:g})", file=sys.stderr)


if __name__ == "__main__":
    run_main(main)
