"""AOFP: `python aofp/do_aofp.py -a vc` (or src56, sres50; or under torchrun).

Starts from a trained base model and keeps training it at a small learning rate while every searched
channel group (`--groups`: internal by default; residual, stem, fanout or all, each scored at all its
consumers) runs AOFP's binary search (aofp/search.py); stops as soon as the MACs fall below `--macs-target`
(the original's `--flops-target`). Then (with `--round-to N`) moves every searched group's width to a
multiple of N, slices off the masked filters through the surgery module, proves the narrow net equals the
masked one, and fine-tunes the narrow net in its own folder. Writes under
aofp_models/{arch}_train/: finish.hdf5 (the masked full-width model, pruned filters zeroed),
finish_converted.hdf5 (the narrow model, with deps) and finetune/finish.hdf5 (the fine-tuned narrow
model, with deps). Re-running the same command resumes either phase.
"""
import dataclasses
import os

from aofp.convert import decide
from aofp.hook import AOFPSearch
from aofp.probe import BN_MODES
from utils.training import skeleton
from utils.training.cli import check_values, finite
from utils.training.method import Headline, Method, Setup, quarter_flags
from utils.command import arch_folder

# The original recipes (specs/aofp_sfp.md A3, A4). Search: SGD momentum 0.9, wd 1e-4 (none on BN and
# biases, biases at 2x lr), lr 1e-3 held constant, batch 64; at most 600 epochs, but the run stops as
# soon as the MACs target is met. Fine-tune of the narrow net: lr 0.01, cosine to 0 over 600 epochs.
SEARCH = dict(epochs=600, batch_size=64, lr=1e-3, milestones=(), weight_decay=1e-4, eval_every=2)
FINETUNE = dict(epochs=600, batch_size=64, lr=0.01, schedule="cosine", weight_decay=1e-4, eval_every=2)
MACS_TARGET = {"vc": 0.35, "src56": 0.50}  # fraction of the MACs to keep; other archs: DEFAULT_TARGET
DEFAULT_TARGET = 0.50


def flags(p):
    s = p.add_argument_group("AOFP search (defaults: the original recipe)")
    skeleton.add_macs_target(s, "--flops-target", note=f"stop once the MACs fall below it; vc 0.35, src56 0.50, else "
                                                       f"{DEFAULT_TARGET}; --flops-target: the original's spelling")
    s.add_argument("--iters-per-half", type=int, default=1000, help="steps per half of the binary search")
    s.add_argument("--thresh", type=finite, default=0.01,
                   help="a half is pruned when every filter's mean damage t is below this")
    s.add_argument("--warmup-iters", type=int, default=500, help="training steps before the first search starts")
    s.add_argument("--bn-mode", choices=BN_MODES, default="own",
                   help="normalise the ablated output with its own batch statistics (own: the original's, default) "
                        "or the normal pass's (base: 1.6x the damage of a random half on a trained src20); BN running "
                        "statistics are never touched by the ablated pass")
    skeleton.add_groups(s, "internal")
    skeleton.add_round_to(s)
    f = p.add_argument_group("fine-tuning of the narrow net (the shared flags below apply to the search)")
    f.add_argument("--skip-finetune", action="store_true", help="stop after writing finish_converted.hdf5")
    f.add_argument("--ft-epochs", type=int, default=FINETUNE["epochs"])
    f.add_argument("--ft-lr", type=float, default=FINETUNE["lr"], help="cosine from this to 0")
    f.add_argument("--ft-batch-size", type=int, default=FINETUNE["batch_size"])
    f.add_argument("--ft-weight-decay", type=float, default=FINETUNE["weight_decay"])
    f.add_argument("--ft-eval-every", type=int, default=FINETUNE["eval_every"])
    f.add_argument("--ft-max-steps", type=int, help="stop the fine-tune after this many steps (smoke runs)")


def validate(args):
    if args.macs_target is None:
        args.macs_target = MACS_TARGET.get(args.arch, DEFAULT_TARGET)
    skeleton.check_macs_target(args)
    if not args.iters_per_half >= 1:
        raise ValueError(f"--iters-per-half {args.iters_per_half}: must be at least 1")
    if not args.thresh > 0:
        raise ValueError(f"--thresh {args.thresh}: must be positive (the damage t is never negative)")
    if not args.warmup_iters >= 0:
        raise ValueError(f"--warmup-iters {args.warmup_iters}: must not be negative")
    skeleton.check_groups(args.arch, args.groups)
    skeleton.check_round_to(args.round_to)
    check_values({"epochs": args.ft_epochs, "lr": args.ft_lr, "batch_size": args.ft_batch_size,
                  "weight_decay": args.ft_weight_decay, "eval_every": args.ft_eval_every,
                  "max_steps": args.ft_max_steps}, prefix="ft-")


def prepare(run):
    a = run.args
    return Setup(AOFPSearch(run.graph, run.model.deps, a.groups, a.iters_per_half, a.thresh, a.warmup_iters,
                            a.macs_target, run.cfg.seed, a.bn_mode))


def plan(run):
    """The decision; a rounded net is evaluated again, so finish.hdf5's metrics are its own."""
    p = decide(run.trainer.model, run.graph, run.setup.hook, run.trainer.step, run.args.round_to)
    if p.info.get("rounded"):
        searched, run.trainer.metrics = run.trainer.metrics, run.trainer.evaluate()
        p.info["searched_metrics"] = searched
        p.lines.append(f"the searched net: top1 {searched['top1']:.2f}; rounded to multiples of {run.args.round_to}: "
                       f"top1 {run.trainer.metrics['top1']:.2f}")
    return p


def finetune(run):
    """Train the narrow net in its own folder (the search's files stay as they are)."""
    a = run.args
    if a.skip_finetune:
        return
    cfg = dataclasses.replace(run.cfg, **{
        **FINETUNE, "epochs": a.ft_epochs, "lr": a.ft_lr, "batch_size": a.ft_batch_size,
        "weight_decay": a.ft_weight_decay,
        "eval_every": a.ft_eval_every, "max_steps": a.ft_max_steps, "output": os.path.join(run.cfg.output, "finetune"),
        "extra": {"phase": "fine-tune of finish_converted.hdf5", "deps": run.conversion.deps}})
    skeleton.train_more(run, cfg, run.conversion.model, "AOFP fine-tuned")


AOFP = Method(
    "aofp", "AOFP", "aofp/do_aofp.py", __doc__, {"cifar10": SEARCH, "imagenet": SEARCH},
    output=lambda args: f"aofp_models/{arch_folder(args.arch)}_train",
    flags=flags, validate=validate, prepare=prepare, decide=plan, finetune=finetune, init_aliases=("--base",),
    phases=lambda args, cfg: [(cfg.epochs, cfg.batch_size), (args.ft_epochs, args.ft_batch_size)],
    quarter=lambda recipe: [*quarter_flags(recipe), "--ft-epochs", str(FINETUNE["epochs"] // 4)],
    # the original's 0.50 of its MACs count is 0.4969 of ours; the paper's exact ResNet-56 row is not verified
    headlines={"src56": Headline("AOFP (ICML'19)", ("--macs-target", "0.4969", "--groups", "internal"), 0.4969, 50.0,
                                 None, None, "landscape.md 2c (about no drop); aofp_sfp.md A4")},
    budgets={
        # halves of 10 steps rather than 1000, a half is pruned when its damage is below 0.1; a search of at
        # most 2 epochs (it met the target at step 118 of 156), then 1 of fine-tuning
        "demo": ["--epochs", "2", "--iters-per-half", "10", "--warmup-iters", "10", "--thresh", "0.1",
                 "--ft-epochs", "1"],
        "smoke": ["--epochs", "1", "--max-steps", "40", "--iters-per-half", "1", "--warmup-iters", "0",
                  "--thresh", "1e9", "--ft-epochs", "1", "--ft-max-steps", "2"],
        "study": ["--epochs", "3", "--batch-size", "128", "--iters-per-half", "20", "--warmup-iters", "20",
                  "--thresh", "0.1", "--ft-epochs", "2", "--ft-batch-size", "128"],
    },
    note=lambda conversion, setting: (
        "AOFP: logit diff between the masked net and the pruned narrow net; the search stops once the MACs are "
        "below the target or its epochs run out (then it stays above); *final* is the narrow net after "
        "fine-tuning."),
    final="finetune/finish.hdf5", done="finetune/finish.hdf5",
)
