"""Compare the four methods and the baselines on one base network: `python compare_methods.py`.

Starts from a base network (by default src20 on the embedded cifar10-mini, from the shipped src20 base trained on
CIFAR-10: 5,000 training images and the whole 10,000-image test set), prunes it with ResRep, C-SGD, AOFP and SFP to
the same fraction of its MACs (`--macs-target`, each as close as it allows, all on the internal layers; with
`--latency-target F` ResRep aims at F of the base's latency instead, predicted by a per-layer table measured on the
device), runs the baselines at the same MACs and epochs (L1 pruning + fine-tune, the narrow net from scratch, the
base trained as long), for each seed of `--seeds` and each target, reads every network back from its file,
evaluates it, times it (BN fused) and writes under the output folder (default compare_models/{arch}_{data}/):

    comparison.md    the table (mean ± std over seeds, n), which method beats which baseline, the commands
    comparison.png   top-1 against MACs, a line per method and baseline, error bars; the base as a star
    speedup.png      the measured speed-up against MACs
    comparison.json  every run's numbers, the table's rows, the settings and the command of each stage
    base/            the base (when trained);  {resrep,csgd,aofp,sfp,l1,scratch}/macs{T}-seed{S}/, base+/seed{S}/
    onnx/            with --onnx: every network as ONNX (BN fused), checked in ONNX Runtime (and timed there:
                     the table's ORT columns)

Budgets: `demo` (default on cifar10-mini and synthetic: minutes on a laptop CPU), `paper` (default otherwise: each
method's own recipe; on src56 each at its paper's headline setting), `paper-quarter` (the same, a quarter of the
epochs), `study` (full CIFAR-10, see docs/COMPARISON.md), `smoke` (a few steps per stage). `--dry-run` prints the
plan; `--jobs N` runs N stages at once. A finished stage is not redone; an interrupted one resumes when the same
command is re-run.

This file is orchestration only: it iterates the registry (utils/registry.py), where every method and
baseline is one `Method` (its budget flags, how it meets a MACs target, its footnote); every stage's result is
read from the one file layout all of them write (utils/training/skeleton.py); running stages (here or as
processes) is utils/training/stages.py, measuring the networks utils/training/measure.py; the aggregation over
seeds, the verdicts and the table are utils/tools/compare.py, the reproduction table utils/tools/reproduction.py,
the plots utils/tools/plots.py.
"""
import json
import os
import shlex
import sys
import time

import torch

from base_model import get_arch
from baselines.plain import BASE, shipped_base
from utils.atomic import write_json, write_text
from utils.command import ArgumentParser, NotFinished, arch_folder, run_main
from utils.registry import REGISTRY, headlines, list_methods
from utils.tools.compare import EXACT_TOL, aggregate, report_markdown, verdicts
from utils.tools.plots import plot_accuracy, plot_speedup
from utils.tools import reproduction
from utils.tools.store import hardware, read_attrs
from utils.training import skeleton
from utils.training.cli import base_weights, check_values
from utils.training.dist import resolve_device
from utils.training.engine import TIME_MARGIN_S
from utils.training.measure import measure_all
from utils.training.method import budget_flags, macs_aim
from utils.training.skeleton import converted_file
from utils.training.stages import Stage, h200_minutes, run_here, run_processes, steps

GROUP_CHOICES = ("internal", "all")  # internal: ResRep's and AOFP's choice; all: the residual stream and stem too
# Every stage of these budgets evaluates its 10,000 test images once, at its end.
QUIET = {b: ["--eval-every", "1000", "--eval-last", "0", "--no-eval-start"] for b in ("demo", "study")}
BUDGETS = ("demo", "paper", "paper-quarter", "study", "smoke")
PAPER = ("paper", "paper-quarter")  # each method at its paper's headline setting (Method.headlines) where it has one


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
    p.add_argument("--macs-target",
                   help="fraction of the base MACs to keep, or a comma list for a curve, e.g. 0.3,0.5,0.7 "
                        "(default 0.5; the paper budgets: each method's headline setting where its paper has one "
                        "for the arch)")
    p.add_argument("--latency-target", metavar="F",
                   help="the methods that take one (ResRep) aim at F of the base's latency (batch 64 on --device, "
                        "predicted by a per-layer table measured once and cached) instead of the MACs target; one F "
                        "per --macs-target value, its row stays at that MACs target. The others still aim at "
                        "--macs-target")
    p.add_argument("--budget", choices=BUDGETS,
                   help="demo (default on cifar10-mini and synthetic), paper (default otherwise: the original recipes; "
                        "on src56 each method at its paper's headline setting), paper-quarter (the same with a quarter "
                        "of every stage's epochs), study, smoke; docs/COMPARISON.md")
    p.add_argument("--groups", choices=GROUP_CHOICES, default="internal",
                   help="channel groups every method and baseline prunes: internal (one conv, one consumer; "
                        "default) or all (the residual-tied groups and the stem too)")
    p.add_argument("--round-to", type=int, default=1, metavar="N",
                   help="every pruned width a multiple of N, in every method and baseline (default 1: any width)")
    p.add_argument("--methods", default=",".join(methods), help=f"comma list (default: {', '.join(methods)})")
    p.add_argument("--baselines",
                   help=f"comma list, or '' for none (default: {', '.join(baselines)}; the paper budgets: none)")
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
    p.add_argument("--jobs", type=int, default=1, metavar="N",
                   help="run up to N independent stages at once, as processes on the one device (default 1: one after "
                        "another, in this process); on a CPU each gets --threads")
    p.add_argument("--threads", type=int, metavar="K",
                   help="CPU threads per stage (default: all of them with --jobs 1, else the cores split between the "
                        "jobs). On a CPU a result depends on it: give the same K to compare runs bitwise")
    p.add_argument("--deterministic", action="store_true",
                   help="every stage with deterministic algorithms (bitwise repeatable on a CPU)")
    p.add_argument("--dry-run", action="store_true",
                   help="print every stage that would run, its training steps and its estimated H200 time; run and "
                        "write nothing")
    p.add_argument("--reproduction", nargs="*", metavar="JSON",
                   help="print the reproduction table (every paper's headline setting: published, ours from these "
                        "comparison.json files of paper budgets, difference, status) and exit; runs nothing")
    p.add_argument("--time-limit", type=float, metavar="MINUTES",
                   help="stop at a stage's checkpoint before this many minutes, exit code 3 and 'not finished: run "
                        "the same command again to continue'; re-running continues where it stopped")
    args = p.parse_args(argv)
    get_arch(args.arch)
    args.macs_targets = numbers(args.macs_target or "0.5", "--macs-target")
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
    for flag, value in (("--jobs", args.jobs), ("--threads", args.threads)):
        if value is not None and not value >= 1:
            raise ValueError(f"{flag} {value}: must be at least 1")
    args.deadline = None if args.time_limit is None else time.monotonic() + 60 * args.time_limit
    args.methods = names(args.methods, methods, "--methods")
    default_budget = "demo" if args.data in ("cifar10-mini", "synthetic") else "paper"
    args.budget = args.budget or default_budget
    if args.baselines is None:
        args.baselines = "" if args.budget in PAPER else ",".join(baselines)
    args.baselines = names(args.baselines, baselines, "--baselines")
    if not args.methods + args.baselines:
        raise ValueError("--methods and --baselines name nothing to run")
    args.extra = parse_extra(args.extra)
    suffix = "" if args.budget == default_budget else f"_{args.budget}"
    args.output = args.output or os.path.join("compare_models", f"{arch_folder(args.arch)}_{args.data}{suffix}")
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
    """Plans every stage (its entry script and flags, in its own folder), skips finished ones, checks the others
    before any runs, then runs them here or as processes (--jobs); reads each result back from its files."""

    def __init__(self, args):
        self.args = args
        self.dataset = get_arch(args.arch).dataset  # whose paper recipe the paper budgets use
        self.commands = []
        self.common = ["--data", args.data, "--device", args.device]
        self.common += ["--deterministic"] if args.deterministic else []
        if args.data_root:
            self.common += ["--data-root", args.data_root]
        self.total = 1 + len(args.seeds) * sum(len(self.targets(REGISTRY[n])) for n in args.methods + args.baselines)
        self.step, self.number = 0, {}
        self.planned = []  # --dry-run: the stages that would run

    def headline(self, method):
        """The method's paper setting on this arch when a paper budget runs without --macs-target, else None."""
        a = self.args
        return method.headlines.get(a.arch) if a.budget in PAPER and a.macs_target is None else None

    def targets(self, method):
        if not method.per_target:
            return [None]
        headline = self.headline(method)
        return [headline.macs] if headline else self.args.macs_targets

    def ready(self, stage):
        """Record the stage's command and check its flags (nothing written before; an error names the stage);
        False when it is done already."""
        self.step += 1
        self.number[stage.label] = self.step
        self.commands.append(stage.command)
        record = os.path.join(stage.folder, "stage_command.txt")
        if os.path.exists(record) and open(record).read().strip() != stage.command:
            raise ValueError(f"{stage.folder} was made by another command:\n  {open(record).read().strip()}\n"
                             f"not\n  {stage.command}\ndelete the folder to redo the stage, or pass another -o")
        if os.path.exists(stage.done):
            print(f"== [{self.step}/{self.total}] {stage.label}: done ({stage.done}; delete it to redo)", flush=True)
            return False
        try:
            skeleton.check(stage.method, stage.argv, start=not self.args.dry_run)
        except (ValueError, FileNotFoundError) as e:
            raise type(e)(f"stage {stage.label} ({stage.command}): {e}") from None
        return True

    def run(self, stages, alone=False):
        """Run the stages that are not done: here, one after another, or --jobs of them at once as processes. A
        stage's thread count follows from --jobs and --threads only (not from how many stages are left), so a
        resumed stage keeps its threads; `alone` (the base, before every other stage) runs here with --threads."""
        a = self.args
        todo = [s for s in stages if self.ready(s)]
        if a.dry_run:
            self.planned += todo
            return
        for stage in todo:
            write_text(os.path.join(stage.folder, "stage_command.txt"), stage.command + "\n")
        if a.jobs == 1 or alone:
            for stage in todo:
                self.started(stage)
                t = time.time()
                run_here(stage, a.deadline, a.threads)  # the deadline is not part of the stage's command
                self.finished(stage, time.time() - t)
        else:
            run_processes(todo, a.jobs, a.threads or max(1, torch.get_num_threads() // a.jobs), a.deadline,
                          self.started, self.finished)

    def started(self, stage):
        print(f"== [{self.number[stage.label]}/{self.total}] {stage.label}: {stage.command}", flush=True)

    def finished(self, stage, seconds):
        if not os.path.exists(stage.done):
            raise RuntimeError(f"{stage.label} ended without writing {stage.done}")
        print(f"== {stage.label} finished in {seconds:.0f} s", flush=True)

    def base(self):
        """The base's file, after training it when no file is given, shipped or imported."""
        a = self.args
        if a.init:
            return a.init
        shipped = shipped_base(a.arch, a.data, a.budget) if a.seed == 0 and not a.extra.get("base") else None
        if shipped:  # the base stage's very recipe at seed 0, trained once and committed
            shipped = os.path.relpath(shipped)  # the stages' commands hold no absolute path: a folder can move
            self.step += 1
            print(f"== [{self.step}/{self.total}] base: the shipped {a.arch} base, {shipped} (trained "
                  f"on CIFAR-10 with the study budget's base recipe; its provenance: python display_hdf5.py "
                  f"{shipped}; --init FILE starts from another)", flush=True)
            return shipped
        if a.arch.startswith("sres") and a.budget != "smoke":
            path, make = base_weights(a.arch)  # ImageNet bases come from torchvision, not from training
            if not os.path.isfile(path):
                raise FileNotFoundError(f"{path} (the base model) is missing: make it with `{make}`, or pass --init")
            return path
        out = os.path.join(a.output, "base")
        argv = ["-a", a.arch, "-o", out, *self.common, "--seed", str(a.seed), *QUIET.get(a.budget, []),
                *budget_flags(BASE, a.budget, self.dataset), *a.extra.get("base", [])]
        path = os.path.join(out, "finish.hdf5")
        self.run([Stage(BASE, out, "base", argv, path)], alone=True)
        return path

    def entry(self, method, base, target, seed):
        """One method or baseline at one target and seed: (its Stage, what its result row starts from)."""
        a = self.args
        out = os.path.join(a.output, method.name, f"macs{target:g}-seed{seed}" if method.per_target else f"seed{seed}")
        flags, aim = (macs_aim(target), f" at {target:.0%}") if method.per_target else ([], "")
        setting = method.solve(a.arch, target, a.groups, a.round_to) if method.solve and method.per_target else None
        shape = ["--groups", a.groups, *(["--round-to", str(a.round_to)] if a.round_to > 1 else [])]
        headline = self.headline(method)
        if headline:  # the paper's own setting (its groups included) instead of the comparison's target
            out = os.path.join(a.output, method.name, f"headline-seed{seed}")
            flags, aim, setting, shape = list(headline.flags), " at its paper's setting", headline.setting, []
        elif a.latency_targets is not None and method.latency_target and method.per_target:
            latency = a.latency_targets[a.macs_targets.index(target)]  # instead of the MACs target (ResRep)
            out = os.path.join(a.output, method.name, f"latency{latency:g}-seed{seed}")
            flags, aim, setting = ["--latency-target", f"{latency:g}"], f" at {latency:.0%} of the latency", None
        argv = ["-a", a.arch, *(["--init", base] if method.from_base else []), *flags,
                *(shape if method.groups else []), "-o", out, *self.common, "--seed", str(seed),
                *QUIET.get(a.budget, []), *budget_flags(method, a.budget, self.dataset), *a.extra.get(method.name, [])]
        stage = Stage(method, out, f"{method.label}{aim}, seed {seed}", argv, os.path.join(out, method.done))
        return stage, {"name": method.name, "label": method.label, "target": target, "seed": seed,
                       "baseline": method.baseline, "headline": headline.paper if headline else None,
                       "setting": setting}

    @staticmethod
    def result(stage, start):
        """A finished stage's result, read from its files."""
        method, out = stage.method, stage.folder
        result = {**{k: v for k, v in start.items() if k != "setting"}, "before_top1": None, "logit_diff": None,
                  "final_file": os.path.join(out, method.final) if method.final else None}
        conversion = {}
        if method.converts:
            result["file"] = converted_file(out)
            conversion = read_attrs(result["file"])["conversion"]
            result.update(before_top1=conversion["trained_metrics"]["top1"], logit_diff=conversion["max_logit_diff"])
        else:
            result["file"], result["final_file"] = result["final_file"], None
        result["note"] = method.note(conversion, start["setting"])
        return result


def print_plan(args, stages):
    """--dry-run: every stage that would run, its training steps and what it would take on an H200."""
    total_steps, minutes, unknown = 0, 0.0, False
    print(f"plan: {args.arch} on {args.data}, budget {args.budget}, seeds {args.seeds}: {len(stages)} stage(s) to run "
          "(nothing was run or written)")
    for i, stage in enumerate(stages, 1):
        n = steps(stage, args.data, start=False)
        m = h200_minutes(stage, args.arch, n)
        total_steps += n
        minutes += m or 0
        unknown |= m is None
        time_text = "H200 time not measured" if m is None else f"about {m:.0f} H200-minutes"
        print(f"{i:3d}. {stage.label}: {n:,} steps, {time_text}\n     {stage.command}")
    est = "not measured for this arch" if unknown else (f"about {minutes:.0f} H200-minutes ({minutes / 60:.1f} h) at "
                                                        f"the one measured {args.arch} step, run one after another")
    print(f"total: {total_steps:,} training steps; {est}")


def main(argv=None):
    args = parse(argv)
    if args.reproduction is not None:
        comparisons = []
        for path in args.reproduction:
            with open(path) as f:
                comparisons.append(json.load(f))
        print(reproduction.markdown(headlines(), comparisons))
        return 0
    start = time.time()
    device = resolve_device(args.device)
    stages = Stages(args)
    base = stages.base()
    planned = [stages.entry(REGISTRY[name], base, target, seed)
               for name in args.methods + args.baselines for target in stages.targets(REGISTRY[name])
               for seed in args.seeds]
    stages.run([stage for stage, _ in planned])
    if args.dry_run:
        print_plan(args, stages.planned)
        return 0
    results = [stages.result(stage, begun) for stage, begun in planned]
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
                "date": time.strftime("%Y-%m-%d %H:%M"), "seconds": round(seconds, 1), "torch": torch.__version__,
                "hardware": hardware(), "jobs": args.jobs, "threads": args.threads}
    notes = list(dict.fromkeys(r["note"] for r in rows if r.get("note")))
    against = None
    if any(r.get("headline") for r in rows):  # only this run's rows: the other headline settings are "not run"
        against = reproduction.markdown(headlines(), [{"settings": settings, "rows": rows}])
    text = report_markdown(rows, settings, notes, commands, onnx=args.onnx, reproduction=against)
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
