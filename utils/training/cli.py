"""The command line every entry script shares: all TrainConfig knobs, recipe defaults, the default base weights."""
import argparse
import math
from fractions import Fraction

from .dist import add_launcher_args
from .engine import TrainConfig
from utils.command import arch_folder


def add_train_args(p):
    """Every knob defaults to None here, so the script's recipe (then TrainConfig) fills it."""
    g = p.add_argument_group("training (defaults: the paper's recipe for the arch)")
    g.add_argument("--epochs", type=int)
    g.add_argument("--batch-size", type=int, help="global batch, over all processes")
    g.add_argument("--lr", type=float)
    g.add_argument("--momentum", type=float)
    g.add_argument("--nesterov", action=argparse.BooleanOptionalAction, default=None)
    g.add_argument("--weight-decay", type=float)
    g.add_argument("--schedule", choices=["multistep", "cosine"])
    g.add_argument("--milestones", type=lambda s: tuple(int(x) for x in s.split(",") if x), help="e.g. 120,180")
    g.add_argument("--gamma", type=float)
    g.add_argument("--warmup-epochs", type=float)
    g.add_argument("--label-smoothing", type=float)
    g.add_argument("--amp", action=argparse.BooleanOptionalAction, default=None,
                   help="bf16 autocast (default: on where it is native: CUDA, CPUs with AVX512-BF16 or AMX)")
    g.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None)
    g.add_argument("--sync-bn", action=argparse.BooleanOptionalAction, default=None)
    g.add_argument("--eval-every", type=int, help="epochs between evaluations")
    g.add_argument("--eval-last", type=int, help="also evaluate after each of the last N epochs (default 10)")
    g.add_argument("--eval-start", action=argparse.BooleanOptionalAction, default=None,
                   help="evaluate the network a method starts from, before training (default on)")
    g.add_argument("--ckpt-every", type=int, help="steps between resume checkpoints")
    g.add_argument("--log-every", type=int)
    g.add_argument("--max-steps", type=int, help="stop after this many steps (smoke runs)")
    g.add_argument("--time-limit", type=float, metavar="MINUTES",
                   help="stop at a checkpoint before this many minutes (a GPU slot, a cluster job's limit), exit code "
                        "3 and 'not finished: run the same command again to continue'; re-running continues bitwise")
    g.add_argument("--seed", type=int)
    g.add_argument("--deterministic", action=argparse.BooleanOptionalAction, default=None)
    g.add_argument("-o", "--output", help="folder for every file of the run")
    d = p.add_argument_group("data and device")
    d.add_argument("--data", help="cifar10, cifar10-mini (embedded), imagenet or synthetic (default: the arch's)")
    d.add_argument("--data-root", help="dataset folder or archive (default: cifar10_data / imagenet_data)")
    d.add_argument("--workers", type=int, default=4, help="loader processes (image-folder data)")
    d.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    add_launcher_args(p)
    return p


# The range of every numeric TrainConfig knob: (is the value fine, what it must be). `not (v > 0)` is also
# true for NaN, so every test is written to fail on NaN.
LIMITS = {
    "epochs": (lambda v: v >= 1, "must be at least 1"),
    "batch_size": (lambda v: v >= 1, "must be at least 1 (the global batch, over all processes)"),
    "lr": (lambda v: 0 < v < float("inf"), "must be a positive number"),
    "momentum": (lambda v: 0 <= v < 1, "must be in [0, 1)"),
    "weight_decay": (lambda v: 0 <= v < float("inf"), "must not be negative"),
    "bn_weight_decay": (lambda v: 0 <= v < float("inf"), "must not be negative"),
    "bias_lr_factor": (lambda v: 0 <= v < float("inf"), "must not be negative"),
    "gamma": (lambda v: 0 < v < float("inf"), "must be a positive number (the lr factor at each milestone)"),
    "warmup_epochs": (lambda v: 0 <= v < float("inf"), "must not be negative"),
    "warmup_factor": (lambda v: 0 <= v <= 1, "must be in [0, 1] (the warm-up's lr, as a fraction of --lr)"),
    "label_smoothing": (lambda v: 0 <= v < 1, "must be in [0, 1)"),
    "eval_every": (lambda v: v >= 1, "must be at least 1 (epochs between evaluations)"),
    "eval_last": (lambda v: v >= 0, "must not be negative"),
    "ckpt_every": (lambda v: v >= 1, "must be at least 1 (steps between checkpoints)"),
    "log_every": (lambda v: v >= 1, "must be at least 1"),
    "max_steps": (lambda v: v >= 1, "must be at least 1"),
    "time_limit": (lambda v: 0 < v < float("inf"), "must be a positive number of minutes"),
    "milestones": (lambda v: all(m >= 1 for m in v), "every milestone must be an epoch of at least 1"),
    "workers": (lambda v: v >= 0, "must not be negative"),
    "seed": (lambda v: v >= 0, "must not be negative"),
}


def check_values(values, prefix=""):
    """Refuse the first value out of its range (LIMITS) with one line naming its flag, e.g.
    `--epochs -1: must be at least 1`. `values` maps TrainConfig field names to values (None = unset)."""
    for name, value in values.items():
        if name in LIMITS and value is not None and not LIMITS[name][0](value):
            shown = ",".join(map(str, value)) if isinstance(value, tuple) else value
            raise ValueError(f"--{prefix}{name.replace('_', '-')} {shown}: {LIMITS[name][1]}")


def check_config(cfg, args=None):
    """Every numeric knob of a TrainConfig (and the loader processes) in range, before anything runs; milestones
    given on the command line must fall inside the run and belong to the multistep schedule."""
    check_values({**vars(cfg), "workers": getattr(args, "workers", None)})
    given = getattr(args, "milestones", None)
    if given:
        shown = ",".join(map(str, given))
        if cfg.schedule != "multistep":
            raise ValueError(f"--milestones {shown}: the {cfg.schedule} schedule has no milestones; leave them out "
                             "or pass --schedule multistep")
        if max(given) >= cfg.epochs:
            raise ValueError(f"--milestones {shown}: every milestone must be an epoch before the last (--epochs "
                             f"{cfg.epochs}); a later one never lowers the lr")


def fraction(text):
    """argparse type: an exact fraction ('0.5', '1/2') as a Fraction; a ValueError (not a ZeroDivisionError) for
    anything else, so that argparse reports it as one line."""
    try:
        return Fraction(text)
    except (ValueError, ZeroDivisionError):
        raise ValueError(text) from None


def finite(text):
    """argparse type: a float that is neither NaN nor infinite (a method's own knobs: lasso strength, thresholds)."""
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(text)
    return value


def base_weights(arch):
    """(path, the command that makes it) of the base weights every method starts from by default:
    torchvision's import for the ImageNet ResNets, train_base_model.py's output otherwise."""
    if arch.startswith("sres"):
        depth = arch[len("sres"):]
        return f"torchvision_res{depth}.hdf5", "python transform_torchvision.py" + ("" if depth == "50" else f" -a {arch}")
    return f"{arch_folder(arch)}_train/finish.hdf5", f"python train_base_model.py -a {arch}"


def train_config(args, recipe, **extra):
    """TrainConfig from its defaults, then the recipe, then whatever the user passed."""
    fields = {f for f in TrainConfig.__dataclass_fields__}
    values = {k: v for k, v in recipe.items() if k in fields}
    values.update({k: v for k, v in vars(args).items() if k in fields and v is not None})
    if getattr(args, "epochs", None) and getattr(args, "milestones", None) is None and "epochs" in recipe:
        # A shorter run keeps the recipe's schedule shape: milestones scale with the epochs.
        scale = args.epochs / recipe["epochs"]
        values["milestones"] = tuple(max(1, round(m * scale)) for m in recipe.get("milestones", ()))
    values["extra"] = {**extra, **{k: v for k, v in vars(args).items() if k not in fields}}
    return TrainConfig(**values)
