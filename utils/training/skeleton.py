"""The run skeleton: what train_base_model.py and the four methods' entry scripts share.

    flags -> recipe -> config -> start weights -> processes -> seed -> model -> data -> hooks -> fit
          -> decide -> convert through surgery -> evaluate -> prove -> write the two files

A method's script holds only its recipe (RECIPES), its flags, `prepare(run)` (its hooks: a `Setup`) and
`decide(run)` (its decision after training: a `Plan`), and calls `main`. Every method then writes the same
two files under its output folder, with one attribute layout:

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
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn

from base_model import build_model, default_deps, get_arch
from utils.pruning.channel_graph import PRUNABLE_ROLES, arch_graph_at
from utils.pruning.convert import convert
from utils.tools.store import model_from_hdf5, save_hdf5

from . import dist
from .cli import add_train_args, base_weights, check_config, train_config
from .data import make_loaders
from .engine import Trainer, evaluate

TRAINED, CONVERTED = "finish.hdf5", "finish_converted.hdf5"
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
def parser(doc, init_help, init_aliases=()):
    """-a/--arch and --init (the starting weights) first; the method adds its group, then `parse` adds the
    shared training flags."""
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-a", "--arch", required=True, help=ARCHS)
    p.add_argument("--init", *init_aliases, help=init_help)
    return p


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


def check_round_to(n):
    if n < 1:
        raise ValueError(f"--round-to {n}: must be at least 1 (1 keeps any width; 8 keeps multiples of 8)")
    return n


def parse(p, argv=None):
    return add_train_args(p).parse_args(argv)


def config(args, recipes, output=None, **extra):
    """The run's TrainConfig (defaults, then the recipe for the arch's data set, then the flags given), every
    numeric knob checked: a value out of range is one line and exit 2 before anything is read or written."""
    recipe = dict(recipes[get_arch(args.arch).dataset], output=args.output or output)
    cfg = train_config(args, recipe, **extra)
    check_config(cfg, args)
    return cfg


def required_init(args):
    """The base weights a pruning method starts from: --init, else the arch's base (which must exist)."""
    path, command = base_weights(args.arch)
    if args.init is None:
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{path}: no such file; make the base model with `{command}`, or pass --init FILE")
        return path
    return optional_init(args, f" (the default base model, {path}, is made by `{command}`)")


def optional_init(args, hint=""):
    """--init when given (it must exist), else None: train from scratch."""
    if args.init is not None and not os.path.isfile(args.init):
        raise FileNotFoundError(f"--init {args.init}: no such file{hint}")
    return args.init


# --- what a method gives -------------------------------------------------------------------------------
@dataclass
class Setup:
    """What a method's prepare(run) returns: its hooks, optimizer overrides, and lines for the log."""
    hooks: list
    param_rule: object = None  # engine.param_groups rule: per-tensor lr, weight decay, momentum
    lines: list = field(default_factory=list)


@dataclass
class Plan:
    """What a method's decide(run) returns after training: its decision, and the reference its conversion
    must equal (default: the trained net itself)."""
    decisions: dict  # {group id: utils.pruning.surgery.Decision}
    reference: nn.Module | None = None
    reference_name: str = "the trained net"
    state: dict | None = None  # the trained state to narrow, without what the decisions fold in
    info: dict = field(default_factory=dict)  # more facts for the files' `conversion` attribute
    lines: list = field(default_factory=list)  # more lines for the log, before the proof
    after: Callable | None = None  # (converted net) -> (more info, more lines), after the proof (a speed-up)


@dataclass
class Run:
    """One run, filled in step by step; `main` returns it (tests and the comparison read it)."""
    args: argparse.Namespace
    cfg: object  # engine.TrainConfig
    ctx: object  # dist.DistContext
    init: str | None
    model: nn.Module | None = None
    num_classes: int | None = None
    graph: object = None  # the channel graph at the start model's widths
    train: object = None
    val: object = None
    setup: Setup | None = None
    trainer: Trainer | None = None
    conversion: object = None  # utils.pruning.convert.Conversion
    metrics: dict | None = None  # the converted network's (the trained one's for a plain run)

    @property
    def spec(self):
        return get_arch(self.args.arch)

    @property
    def hook(self):
        """The method's own hook: the last one prepare() returned."""
        return self.setup.hooks[-1]

    def build(self, deps):
        return build_model(self.args.arch, deps, self.num_classes)

    def loaders(self, batch_size):
        a, ctx = self.args, self.ctx
        return make_loaders(a.data, a.data_root, batch_size, ctx.device, ctx.rank, ctx.world_size, self.cfg.seed,
                            a.workers, image_size=self.spec.input_size, num_classes=self.num_classes)

    def log(self, line):
        self.trainer.log.log(line)


# --- the skeleton ------------------------------------------------------------------------------------
def main(args, recipes, output, *, name=None, label=None, init=optional_init, prepare=None, decide=None,
         then=None, fit=True, **extra):
    """Run one entry script: train with the method's hooks (with `fit=False`, only evaluate the start: a
    one-shot method such as L1 pruning), then (with `decide`) convert, prove and write finish.hdf5 and
    finish_converted.hdf5, else write finish.hdf5; then `then(run)` (a fine-tune of the converted net).
    `extra` is recorded in config.json."""
    spec = get_arch(args.arch)
    args.data = args.data or spec.dataset
    cfg = config(args, recipes, output, **extra)
    cfg.extra["init"] = start = init(args)  # the method's flags and the starting weights, before anything is written
    run = Run(args, cfg, None, start)
    run.ctx = dist.setup(args.device, args.local_rank)
    try:
        torch.manual_seed(cfg.seed)
        if run.init is None:
            run.model = build_model(args.arch, getattr(args, "deps", None))
        else:
            run.model = model_from_hdf5(run.init, args.arch, trainable=True)[0]
            if getattr(args, "deps", None) not in (None, run.model.deps):
                raise ValueError(f"--deps {args.deps} differ from the widths of --init {run.init}: {run.model.deps}")
        run.num_classes = run.model.num_classes
        run.graph = arch_graph_at(args.arch, run.model.deps, run.num_classes)
        run.train, run.val = run.loaders(cfg.batch_size)
        run.setup = prepare(run) if prepare else Setup([])
        run.trainer = Trainer(cfg, run.model, run.train, run.val, run.ctx, run.setup.hooks, run.setup.param_rule)
        for line in run.setup.lines:
            run.log(line)
        if fit:
            run.trainer.fit()
        else:
            run.log(f"{label or args.arch} starts from {run.init}: nothing is trained before the conversion")
        dist.broadcast_buffers(run.model)
        if decide is None:
            run.metrics = save_plain(run, run.model, run.trainer.metrics, label)
        else:
            plan = decide(run)
            if not fit:  # the trained form is what the decision made of the start (L1: its dropped filters zeroed)
                run.trainer.metrics = run.trainer.evaluate()
            convert_and_save(run, plan, name, label)
        if then is not None:
            then(run)
    finally:
        dist.cleanup()
    return run


def convert_and_save(run, plan, name, label):
    """The one convert-and-prove step, then both files with one attribute layout."""
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


def save_plain(run, model, metrics, label=None, output=None):
    """finish.hdf5 (with deps) of a run that converts nothing: a base model, a fine-tune."""
    path = os.path.join(output or run.cfg.output, TRAINED)
    if run.ctx.is_main:
        save_hdf5(path, model.state_dict(), deps=model.deps, arch=run.args.arch, metrics=metrics)
        print(f"{run.args.arch}{' ' + label if label else ''} on {run.args.data}: top1 {metrics['top1']:.2f} top5 "
              f"{metrics['top5']:.2f} ({metrics['samples']} test images) -> {path}", flush=True)
    return metrics


def train_more(run, cfg, model, label):
    """Train `model` (the converted network: AOFP's fine-tune) with `cfg` in its own folder; write its
    finish.hdf5 there. The run's files stay as they are."""
    train, val = run.loaders(cfg.batch_size) if cfg.batch_size != run.cfg.batch_size else (run.train, run.val)
    metrics = Trainer(cfg, model, train, val, run.ctx).fit()
    return save_plain(run, model, metrics, label, cfg.output)
