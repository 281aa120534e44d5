"""The command line every entry script shares: all TrainConfig knobs, recipe defaults, the default base weights."""
import argparse

from .dist import add_launcher_args
from .engine import TrainConfig


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
    g.add_argument("--amp", action=argparse.BooleanOptionalAction, default=None, help="bf16 autocast on CUDA")
    g.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None)
    g.add_argument("--sync-bn", action=argparse.BooleanOptionalAction, default=None)
    g.add_argument("--eval-every", type=int, help="epochs between evaluations")
    g.add_argument("--ckpt-every", type=int, help="steps between resume checkpoints")
    g.add_argument("--log-every", type=int)
    g.add_argument("--max-steps", type=int, help="stop after this many steps (smoke runs)")
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


def base_weights(arch):
    """(path, the command that makes it) of the base weights every method starts from by default:
    torchvision's import for the ImageNet ResNets, train_base_model.py's output otherwise."""
    if arch.startswith("sres"):
        depth = arch[len("sres"):]
        return f"torchvision_res{depth}.hdf5", "python transform_torchvision.py" + ("" if depth == "50" else f" -a {arch}")
    return f"{arch}_train/finish.hdf5", f"python train_base_model.py -a {arch}"


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
