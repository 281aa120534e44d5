"""The run skeleton: what train_base_model.py, the four methods and the baselines share, for any `Method`
(method.py).

    flags -> validate -> recipe -> config -> start weights -> processes -> seed -> model -> data -> hooks -> fit
          -> decide -> convert through surgery -> evaluate -> prove -> write the two files -> fine-tune

`run(method, argv)` is every entry script's main; `check(method, argv)` does the steps up to the start weights,
which read and write nothing (the comparison checks a stage with it before running it). Every method then
writes the same two files under its output folder, with one attribute layout:

    finish.hdf5            the trained form (compactors and masks, clusters, masks or zeroed filters inside)
    finish_converted.hdf5  the narrow conv+BN network, with its deps

both with the attributes arch, method, metrics (of that file's network), conversion (old and new deps,
MACs and params before and after, max_logit_diff against the method's own reference, raw_logit_diff
against the trained net as it is, the reference, the trained and converted metrics) and provenance; the
trained file also has `decisions` (per pruned group, named by its first conv: the clusters of channels
that become one channel each). Only rank 0 writes; files are written atomically; re-running resumes.
"""
import argparse
import os
import time
from dataclasses import dataclass

import torch
from torch import nn

from base_model import build_model, default_deps, get_arch
from utils.command import ArgumentParser
from utils.pruning.channel_graph import PRUNABLE_ROLES, arch_graph, arch_graph_at
from utils.pruning.convert import convert
from utils.tools.store import model_from_hdf5, save_hdf5

from . import dist
from .cli import add_train_args, check_config, train_config
from .data import make_loaders
from .engine import EvaluateStart, Trainer, evaluate
from .method import CONVERTED, TRAINED, Setup

# The converted file's name in the original repos (C-SGD: pruned.hdf5, AOFP: finish_pruned.hdf5; ResRep's
# is ours). Runs made before the names were unified wrote these too: they are read, never written.
OLD_CONVERTED = ("pruned.hdf5", "finish_pruned.hdf5")
ARCHS = "src20/32/56/110, sres18/34/50/101/152 or vc"


def converted_file(folder):
    """The converted network of a run folder: finish_converted.hdf5, or an older name; None if absent."""
    for name in (CONVERTED, *OLD_CONVERTED):
        if os.path.isfile(os.path.join(folder, name)):
            return os.path.join(folder, name)
    return None


# --- the command line --------------------------------------------------------------------------------
def parser(method):
    """-a/--arch and --init (the starting weights) first, then the method's own group, then the shared
    training flags."""
    p = ArgumentParser(prog=os.path.basename(method.script), description=method.doc)
    p.add_argument("-a", "--arch", required=True, help=ARCHS)
    p.add_argument("--init", *method.init_aliases, help=method.init_help)
    if method.flags is not None:
        method.flags(p)
    return add_train_args(p)


def add_groups(group, default, *aliases, note=""):
    """--groups: which channel groups are pruned, by role, with the same names in every method."""
    group.add_argument("--groups", *aliases, default=default, metavar="ROLES",
                       help=f"channel groups to prune: 'all' or a comma list of {', '.join(PRUNABLE_ROLES)} "
                            f"(default: {note or default})")


def add_round_to(group):
    """--round-to: kept widths in multiples of N (hardware-aligned), the same flag in every method."""
    group.add_argument("--round-to", type=int, default=1, metavar="N",
                       help="keep every pruned group's width a multiple of N, never below N (8 or 16 align with "
                            "vector lanes and GEMM tiles; default %(default)s: any width)")


class _Spelled(argparse.Action):
    """Stores the value and the spelling the user typed (args.macs_flag: --macs-target or --flops-target), so an
    error names the flag as given."""

    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, values)
        namespace.macs_flag = option_string


def add_macs_target(group, *aliases, note="", own=None):
    """--macs-target: the fraction of the start network's MACs to keep, the same flag in every method. `own`
    names the method's own knob it is solved into (SFP's --rate), which it excludes."""
    group.add_argument("--macs-target", *aliases, dest="macs_target", type=float, metavar="F", action=_Spelled,
                       help="fraction of the start network's MACs to keep" + (f" ({note})" if note else "")
                            + (f"; instead of {own}: the value of {own} whose MACs come nearest F" if own else ""))


def check_groups(arch, groups):
    """--groups: known roles (one line naming a wrong one), checked before the model exists."""
    arch_graph(arch).select(groups)
    return groups


def check_round_to(n):
    if not n >= 1:
        raise ValueError(f"--round-to {n}: must be at least 1 (1 keeps any width; 8 keeps multiples of 8)")
    return n


def check_macs_target(args):
    """args.macs_target, a fraction of the MACs to keep: in (0, 1]. Written so that NaN fails too."""
    target, flag = args.macs_target, getattr(args, "macs_flag", "--macs-target")
    if target is not None and not 0 < target <= 1:
        raise ValueError(f"{flag} {target}: the fraction of the MACs to keep must be in (0, 1]")
    return target


def one_of(args, own, own_flag, note=""):
    """Exactly one of --macs-target and the method's own knob (`own`, an attribute of args)."""
    if (getattr(args, own) is None) == (args.macs_target is None):
        raise ValueError(f"give {own_flag} or --macs-target F (one of them){note}")


def parse(method, argv=None):
    return parser(method).parse_args(argv)


def prepare_args(method, args, start=True):
    """Every flag checked (the method's own, then the shared knobs with the recipe) and the start weights found
    (`start=False`: not looked for, as in a plan made before they exist), reading and writing nothing: (TrainConfig,
    start weights or None). A bad value is one line naming its flag."""
    spec = get_arch(args.arch)
    args.data = args.data or spec.dataset
    if method.validate is not None:
        method.validate(args)
    recipe = dict(method.recipes[spec.dataset], output=args.output or method.output(args))
    cfg = train_config(args, recipe)
    check_config(cfg, args)
    cfg.extra["init"] = found = method.start(args) if start else args.init
    return cfg, found


def check(method, argv, start=True):
    """What `run` checks before it starts anything: the parsed flags, TrainConfig and start weights."""
    args = parse(method, argv)
    return (args, *prepare_args(method, args, start))


# --- one run -------------------------------------------------------------------------------------------
@dataclass
class Run:
    """One run, filled in step by step; `run` returns it (tests and the comparison read it)."""
    method: object  # method.Method
    args: argparse.Namespace
    cfg: object  # engine.TrainConfig
    ctx: object  # dist.DistContext
    init: str | None
    deadline: float | None = None  # time.monotonic() seconds: stop at a checkpoint before (--time-limit)
    model: nn.Module | None = None
    num_classes: int | None = None
    graph: object = None  # the channel graph at the start model's widths
    train: object = None
    val: object = None
    setup: Setup | None = None  # the method's hook is run.setup.hook
    trainer: Trainer | None = None
    conversion: object = None  # utils.pruning.convert.Conversion
    metrics: dict | None = None  # the converted network's (the trained one's for a plain run)

    @property
    def spec(self):
        return get_arch(self.args.arch)

    def build(self, deps):
        return build_model(self.args.arch, deps, self.num_classes)

    def loaders(self, batch_size):
        a, ctx = self.args, self.ctx
        return make_loaders(a.data, a.data_root, batch_size, ctx.device, ctx.rank, ctx.world_size, self.cfg.seed,
                            a.workers, image_size=self.spec.input_size, num_classes=self.num_classes)

    def log(self, line):
        self.trainer.log.log(line)


# --- the skeleton ------------------------------------------------------------------------------------
def run(method, argv=None, deadline=None):
    """Run one entry script: train with the method's hook (a one-shot method, `fit=False`, only evaluates its
    start), then (with `decide`) convert, prove and write finish.hdf5 and finish_converted.hdf5, else write
    finish.hdf5; then its fine-tune. Returns the Run, or None when a finished run is not redone (C-SGD).
    `deadline` (time.monotonic() seconds; also --time-limit minutes from now, whichever comes first): the run
    stops at a checkpoint before it (utils.command.NotFinished), and the same command continues it."""
    args = parse(method, argv)
    cfg, start = prepare_args(method, args)
    if cfg.time_limit is not None:
        deadline = min(time.monotonic() + 60 * cfg.time_limit, deadline or float("inf"))
    if method.skip_done and converted_file(cfg.output):
        print(f"{method.label} {os.path.basename(os.path.normpath(cfg.output))} is already done: "
              f"{converted_file(cfg.output)} (delete it to redo)")
        return None
    if method.make_start is not None:
        method.make_start(args)
    r = Run(method, args, cfg, None, start, deadline=deadline)
    r.ctx = dist.setup(args.device, args.local_rank)
    try:
        torch.manual_seed(cfg.seed)
        if r.init is None:
            r.model = build_model(args.arch, getattr(args, "deps", None))
        else:
            r.model = model_from_hdf5(r.init, args.arch, trainable=True)[0]
            if getattr(args, "deps", None) not in (None, r.model.deps):
                raise ValueError(f"--deps {args.deps} differ from the widths of --init {r.init}: {r.model.deps}")
        r.num_classes = r.model.num_classes
        r.graph = arch_graph_at(args.arch, r.model.deps, r.num_classes)
        r.train, r.val = r.loaders(cfg.batch_size)
        r.setup = method.prepare(r) if method.prepare is not None else Setup()
        hooks = [EvaluateStart(r.setup.evaluate_start)] if r.setup.evaluate_start else []
        hooks += [r.setup.hook] if r.setup.hook is not None else []
        r.trainer = Trainer(cfg, r.model, r.train, r.val, r.ctx, hooks, r.setup.param_rule, deadline)
        for line in r.setup.lines:
            r.log(line)
        if method.fit:
            r.trainer.fit()
        else:
            r.log(f"{method.label} starts from {r.init}: nothing is trained before the conversion")
        dist.broadcast_buffers(r.model)
        if method.decide is None:
            r.metrics = save_plain(r, r.model, r.trainer.metrics, method.label)
        else:
            plan = method.decide(r)
            if not method.fit:  # the trained form is what the decision made of the start (L1: dropped filters zeroed)
                r.trainer.metrics = r.trainer.evaluate()
            convert_and_save(r, plan)
        if method.finetune is not None:
            method.finetune(r)
    finally:
        dist.cleanup()
    return r


def convert_and_save(run, plan):
    """The one convert-and-prove step, then both files with one attribute layout."""
    name, label = run.method.name, run.method.label
    trained, graph, out = run.trainer.model, run.graph, run.cfg.output
    conv = convert(trained, graph, plan.decisions, run.build, run.val.batches, plan.reference, plan.reference_name,
                   plan.state, base_deps=default_deps(run.args.arch))
    metrics = evaluate(conv.model, run.val, run.ctx.device, run.trainer.amp)  # every rank: it all-reduces
    info = {**conv.info, **plan.info, "trained_metrics": run.trainer.metrics, "converted_metrics": metrics}
    more, after_lines = plan.after(conv.model) if plan.after is not None else ({}, [])
    info.update(more)
    path = os.path.join(out, CONVERTED)
    for line in [*plan.lines, *conv.lines, *after_lines,
                 f"trained: top1 {run.trainer.metrics['top1']:.2f}; converted: top1 {metrics['top1']:.2f} top5 "
                 f"{metrics['top5']:.2f} on {metrics['samples']} images -> {path}"]:
        run.log(line)
    if run.ctx.is_main:
        decisions = {graph.groups[g].producers[0].conv: d.clusters for g, d in plan.decisions.items()}
        common = dict(arch=run.args.arch, method=name, conversion=info)
        save_hdf5(os.path.join(out, TRAINED), trained.state_dict(), deps=trained.deps, metrics=run.trainer.metrics,
                  decisions=decisions, **common)
        save_hdf5(path, conv.state, deps=conv.deps, metrics=metrics, **common)
        print(f"{run.args.arch} {label} on {run.args.data}: converted top1 {metrics['top1']:.2f} top5 "
              f"{metrics['top5']:.2f} ({metrics['samples']} test images), MACs {info['macs_ratio']:.2%} of the start "
              f"net's and {info['macs_ratio_to_base']:.2%} of the unpruned {run.args.arch}'s, max logit diff "
              f"{info['max_logit_diff']:.3g} -> {path}", flush=True)
    run.conversion, run.metrics = conv, metrics


def save_plain(run, model, metrics, label=None, trainer=None):
    """finish.hdf5 (with deps) of a run that converts nothing: a base model, a fine-tune (`trainer`: its own)."""
    trainer = trainer or run.trainer
    path = os.path.join(trainer.cfg.output, TRAINED)
    if run.ctx.is_main:
        save_hdf5(path, model.state_dict(), deps=model.deps, arch=run.args.arch, metrics=metrics,
                  training=training_facts(run, trainer))
        print(f"{run.args.arch}{' ' + label if label else ''} on {run.args.data}: top1 {metrics['top1']:.2f} top5 "
              f"{metrics['top5']:.2f} ({metrics['samples']} test images) -> {path}", flush=True)
    return metrics


def training_facts(run, trainer):
    """What a trained file's numbers stand on: data, seed, epochs, steps, batch, schedule, precision, device, start."""
    cfg = trainer.cfg
    return {"data": run.args.data, "seed": cfg.seed, "epochs": cfg.epochs, "steps": trainer.step,
            "batch_size": cfg.batch_size, "lr": cfg.lr, "schedule": cfg.schedule, "weight_decay": cfg.weight_decay,
            "precision": "bf16 autocast" if trainer.amp else "fp32", "device": str(run.ctx.device),
            "processes": run.ctx.world_size, "init": run.init}


def train_more(run, cfg, model, label):
    """Train `model` (the converted network: AOFP's fine-tune) with `cfg` in its own folder; write its
    finish.hdf5 there. The run's files stay as they are."""
    train, val = run.loaders(cfg.batch_size) if cfg.batch_size != run.cfg.batch_size else (run.train, run.val)
    trainer = Trainer(cfg, model, train, val, run.ctx, deadline=run.deadline)
    return save_plain(run, model, trainer.fit(), label, trainer)
