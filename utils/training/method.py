"""What a method is, to the rest of the code: one `Method` object per package, registered in utils/registry.py.

A method is data (its recipes, its comparison budgets) plus a few functions, called by the run skeleton
(skeleton.py) in this order:

    flags(parser)      its own flag group; the skeleton adds -a, --init and the shared training flags
    validate(args)     every flag of its own checked (one line naming the flag, before anything is read or written);
                       may fill derived values into args (a --macs-target solved into C-SGD's ratio or SFP's rate)
    start(args)        the weights it starts from (checked to exist), or None: random initialisation
    make_start(args)   (C-SGD only) make missing start weights: train the base
    prepare(run)       its hooks after the model and data exist: a `Setup`
    decide(run)        after training, its decision: a utils.pruning.plan.Plan the skeleton converts and proves
    finetune(run)      after the conversion (AOFP, L1): train the converted net in its own folder

and by the comparison (compare_methods.py): it passes `--macs-target T` to every method and baseline (ResRep also
takes `--latency-target F`; the paper budgets pass a method's `headlines` setting instead), with the flags of the
chosen budget (`budget_flags`), and reads the result from the files.
Not a class hierarchy: a new method fills these fields.
"""
import os
from dataclasses import dataclass, field
from typing import Callable

from .cli import base_weights

TRAINED, CONVERTED = "finish.hdf5", "finish_converted.hdf5"


@dataclass
class Setup:
    """What a method's prepare(run) returns: its own hook (None: plain training), optimizer overrides, lines for
    the log, and what the network it starts from is called when it is evaluated before training (None: not)."""
    hook: object = None  # an engine.Hook; decide(run) finds it as run.setup.hook
    param_rule: object = None  # engine.param_groups rule: per-tensor lr, weight decay, momentum
    lines: list = field(default_factory=list)
    evaluate_start: str | None = None  # e.g. "before ResRep (base weights, identity compactors)"


def no_start(args):
    """Random initialisation: --init is refused (the from-scratch baseline)."""
    if args.init is not None:
        raise ValueError(f"--init {args.init}: this network starts from random weights; leave --init out")
    return None


def optional_start(args):
    """--init when given (it must exist), else random initialisation."""
    if args.init is not None and not os.path.isfile(args.init):
        raise FileNotFoundError(f"--init {args.init}: no such file")
    return args.init


def required_start(args):
    """The trained base a pruning method starts from: --init, else the arch's base, which must exist."""
    path, command = base_weights(args.arch)
    if args.init is None:
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{path}: no such file; make the base model with `{command}`, or pass --init FILE")
        return path
    if not os.path.isfile(args.init):
        raise FileNotFoundError(f"--init {args.init}: no such file (the default base model, {path}, is made by "
                                f"`{command}`)")
    return args.init


def quarter_flags(recipe):
    """The `paper-quarter` budget's flags for a stage whose paper recipe is `recipe`: a quarter of its epochs, and of
    its warm-up; its milestones scale with the epochs (cli.train_config). Step-based constants (ResRep's mask interval
    and its steps before the first mask, AOFP's halves) are kept."""
    flags = ["--epochs", str(max(1, recipe["epochs"] // 4))]
    if recipe.get("warmup_epochs"):
        flags += ["--warmup-epochs", f"{recipe['warmup_epochs'] / 4:g}"]
    return flags


def training_phases(args, cfg):
    """[(epochs, global batch)] a stage trains for: one phase; AOFP adds its fine-tune."""
    return [(cfg.epochs, cfg.batch_size)]


@dataclass(frozen=True)
class Headline:
    """A paper's headline setting on one architecture, and what the paper published for it (docs/REPRODUCING.md
    cites each source). The comparison's `paper` budgets run it instead of their MACs target."""
    paper: str  # "ResRep (ICCV'21)"
    flags: tuple  # the stage's flags for the setting, instead of --macs-target and --groups
    macs: float  # the fraction of our MACs count the setting keeps: the row's target in the table
    flops_pruned: float  # published, percent
    base_top1: float | None  # published base and pruned top-1; None where the paper's row is not verified
    top1: float | None
    source: str  # where the published number is from
    setting: str | None = None  # the knob in the table's footnote (C-SGD's ratio, SFP's rate)


def macs_aim(target):
    """The flags every method and baseline takes to keep `target` of its start network's MACs."""
    return ["--macs-target", f"{target:g}"]


@dataclass(frozen=True)
class Method:
    """A method or a baseline: everything the skeleton, the entry script and the comparison ask of it."""
    name: str  # "resrep": its stage folder in the comparison, its JSON key, its --methods value
    label: str  # "ResRep"
    script: str  # the entry script a user types: "rr/exp_resrep.py"
    doc: str  # the entry script's --help description
    recipes: dict  # {data set: TrainConfig values (and the method's own defaults)}: the paper's recipe
    output: Callable  # (args) -> the default output folder
    flags: Callable | None = None  # (parser) -> None
    validate: Callable | None = None  # (args) -> None
    start: Callable = required_start  # (args) -> start weights or None
    init_help: str = "the trained base model (default: {arch}_train/finish.hdf5, torchvision_res50.hdf5, ...)"
    init_aliases: tuple = ()  # more spellings of --init (AOFP's --base)
    make_start: Callable | None = None  # (args) -> None
    prepare: Callable | None = None  # (run) -> Setup
    decide: Callable | None = None  # (run) -> Plan; None: no conversion (plain training, scratch)
    finetune: Callable | None = None  # (run) -> None
    fit: bool = True  # False: a one-shot method, converted without training (L1)
    skip_done: bool = False  # a run whose converted file exists is not redone (C-SGD's iterations)
    # --- in the comparison --------------------------------------------------------------------------
    baseline: bool = False  # a baseline row rather than a method
    budgets: dict = field(default_factory=dict)  # {"demo": flags, "study": flags, "smoke": flags, "paper": flags}
    quarter: Callable = quarter_flags  # (paper recipe) -> the paper-quarter budget's flags, added to the paper budget's
    headlines: dict = field(default_factory=dict)  # {arch: Headline}: its paper's headline settings
    phases: Callable = training_phases  # (args, cfg) -> [(epochs, batch)]: for the plan's step counts
    # (arch, macs target, groups, round_to) -> the knob the target is solved into ("0.47"), for the footnote;
    # None: the method aims at the target itself (ResRep, AOFP)
    solve: Callable | None = None
    note: Callable = lambda conversion, setting: ""  # the table's footnote (conversion: the converted file's attribute)
    latency_target: bool = False  # takes --latency-target (the comparison's --latency-target goes to it)
    per_target: bool = True  # runs once per MACs target (base+ does not prune: once per seed)
    groups: bool = True  # takes --groups and --round-to
    from_base: bool = True  # starts from the comparison's base (--init BASE); scratch does not
    converts: bool = True  # writes finish_converted.hdf5 with its proof (scratch and base+ do not)
    final: str | None = None  # the network whose accuracy is final, when not the converted one (a fine-tune)
    done: str = CONVERTED  # the file (in its folder) whose presence means the stage is finished


def budget_flags(method, budget, dataset):
    """A method's flags in one of the comparison's budgets; `dataset` (cifar10 or imagenet: the arch's) picks the
    paper recipe that `paper-quarter` shortens."""
    if budget == "paper-quarter":
        return [*method.budgets.get("paper", []), *method.quarter(method.recipes[dataset])]
    return list(method.budgets.get(budget, []))
