"""The one training engine: train_base_model.py and all four methods run through `Trainer.fit`.

Methods attach `Hook`s instead of copying the loop:
  on_start(trainer)                      after any resume, before the first step: AOFP attaches its probes,
                                         C-SGD binds its clusters, ResRep and C-SGD evaluate the start
  before_step(trainer, images, labels)  AOFP: masks and the ablated pass
  after_backward(trainer)                ResRep, C-SGD: rewrite gradients (after DDP's all-reduce)
  after_step(trainer)                    ResRep: mask updates; AOFP: the search
  on_epoch_end(trainer, epoch)           SFP: zeroing
  on_end(trainer)                        after the last step and the final evaluation, after the last
                                         checkpoint: SFP's final zeroing (it re-evaluates). Conversion is
                                         not a hook: the run skeleton (skeleton.py) converts after `fit`.
and keep their state in `state_dict()`, which the resume checkpoint carries.
"""
import dataclasses
import math
import os
import time
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from utils.atomic import write_json
from utils.command import NotFinished, RunError

from .checkpoint import CheckpointError, load_checkpoint, rng_state, save_checkpoint, set_rng_state
from .dist import all_reduce_sum, broadcast_object
from .runlog import RunLog, progress


@dataclass
class TrainConfig:
    epochs: int = 240
    batch_size: int = 64  # global, over all ranks
    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 1e-4  # on conv and linear weights
    bn_weight_decay: float = 0.0  # on BN weights and all biases
    bias_lr_factor: float = 2.0  # biases learn 2x faster, as the original repos
    schedule: str = "multistep"  # "multistep" or "cosine" (to 0 at the last step)
    milestones: tuple = (120, 180)  # epochs where the multistep lr is multiplied by gamma
    gamma: float = 0.1
    warmup_epochs: float = 0.0
    warmup: str = "linear"  # "linear" from warmup_factor*lr, or "constant" at warmup_factor*lr
    warmup_factor: float = 1.0 / 3
    label_smoothing: float = 0.0
    amp: bool | None = None  # bf16 autocast; None: on where the device computes bf16 natively (native_bf16)
    channels_last: bool = True  # NHWC activations and weights (faster convs on CUDA and on CPU)
    sync_bn: bool = False  # CUDA only
    eval_every: int = 5  # epochs; and every one of the last `eval_last`
    eval_last: int = 10
    eval_start: bool = True  # a method's EvaluateStart hook measures the net it starts from
    ckpt_every: int = 500  # steps; and at every epoch end
    log_every: int = 20  # steps between progress updates (each one syncs with the device)
    max_steps: int | None = None  # stop early (smoke runs); the schedule still spans `epochs`
    time_limit: float | None = None  # minutes the run may take: the skeleton's deadline for the Trainer (NotFinished)
    seed: int = 0
    deterministic: bool = False
    output: str = "run"
    extra: dict = field(default_factory=dict)  # the script's own settings, recorded in config.json


# Settings that may change between a run and its resumption without changing its result.
RESUMABLE_CHANGES = {"eval_every", "eval_last", "eval_start", "ckpt_every", "log_every", "max_steps", "time_limit",
                     "output", "extra"}  # output: a run folder copied elsewhere resumes there
# What a run keeps in hand before its --time-limit: this margin, plus twice its last evaluation and three of its
# steps (measured as it goes), for the checkpoint, the final evaluation and the conversion after training.
TIME_MARGIN_S = 30.0


class NonFiniteLossError(RunError):
    """The loss became NaN or inf; the last good checkpoint is kept."""


class Hook:
    """Does nothing at every point of the loop; a method overrides the points it needs."""

    def on_start(self, trainer): pass
    def before_step(self, trainer, images, labels): pass
    def after_backward(self, trainer): pass
    def after_step(self, trainer): pass
    def on_epoch_end(self, trainer, epoch): pass
    def on_end(self, trainer): pass
    def state_dict(self): return {}
    def load_state_dict(self, state): pass


class EvaluateStart(Hook):
    """Evaluate once before the first step of a fresh run and log it: the accuracy a method starts from."""

    def __init__(self, what):
        self.what = what

    def on_start(self, trainer):
        if trainer.step == 0 and trainer.cfg.eval_start:
            m = trainer.evaluate()
            trainer.log.log(f"{self.what}: top1 {m['top1']:.2f} top5 {m['top5']:.2f} loss {m['loss']:.4f}")


def param_groups(model, cfg, rule=None):
    """SGD parameter groups: weight decay on weights only, `bias_lr_factor` on biases; `rule(name,
    param, module)` may return overrides (lr_factor, weight_decay, momentum, nesterov) for any tensor."""
    groups = {}
    for mname, module in model.named_modules():
        for pname, p in module.named_parameters(recurse=False):
            if not p.requires_grad:
                continue
            name = f"{mname}.{pname}" if mname else pname
            is_bn = isinstance(module, nn.modules.batchnorm._BatchNorm)
            s = {"lr_factor": cfg.bias_lr_factor if pname == "bias" else 1.0,
                 "weight_decay": cfg.bn_weight_decay if (is_bn or pname == "bias") else cfg.weight_decay,
                 "momentum": cfg.momentum, "nesterov": cfg.nesterov}
            if rule is not None:
                s.update(rule(name, p, module) or {})
            key = tuple(sorted(s.items()))
            groups.setdefault(key, {"params": [], "names": [], **s})
            groups[key]["params"].append(p)
            groups[key]["names"].append(name)
    out = []
    for g in groups.values():
        g["lr"] = cfg.lr * g["lr_factor"]
        g["nesterov"] = bool(g["nesterov"] and g["momentum"] > 0)
        out.append(g)
    return out


def lr_factor(cfg, steps_per_epoch):
    """The learning-rate multiplier as a function of the global step."""
    total = max(1, cfg.epochs * steps_per_epoch)
    warm = int(cfg.warmup_epochs * steps_per_epoch)
    milestones = [m * steps_per_epoch for m in cfg.milestones]

    def f(step):
        if step < warm:
            if cfg.warmup == "constant":
                return cfg.warmup_factor
            return cfg.warmup_factor + (1 - cfg.warmup_factor) * step / warm
        if cfg.schedule == "cosine":
            return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warm) / max(1, total - warm))))
        return cfg.gamma ** sum(step >= m for m in milestones)

    if cfg.schedule not in ("multistep", "cosine"):
        raise ValueError(f"unknown schedule {cfg.schedule!r}: use multistep or cosine")
    return f


def evaluate(model, loader, device, amp=False):
    """Top-1, top-5 and loss over the whole validation set, summed over ranks (each sample once)."""
    model.eval()
    sums = torch.zeros(4, dtype=torch.float64, device=device)  # loss, top1, top5, count
    with torch.no_grad(), _autocast(device, amp):
        for images, labels in loader.batches():
            logits = model(images).float()
            top5 = logits.topk(min(5, logits.shape[1]), dim=1).indices
            hit = top5 == labels[:, None]
            sums += torch.stack([nn.functional.cross_entropy(logits, labels, reduction="sum").double(),
                                 hit[:, 0].sum().double(), hit.any(1).sum().double(),
                                 torch.full((), float(labels.numel()), device=device, dtype=torch.float64)])
    all_reduce_sum(sums)
    loss, top1, top5, n = sums.tolist()
    return {"top1": 100 * top1 / n, "top5": 100 * top5 / n, "loss": loss / n, "samples": int(n)}


def _autocast(device, amp):
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=bool(amp))


# PRUNING_NATIVE_BF16=1 makes a CPU answer yes (bf16 by default, emulated where the CPU lacks it: slower, but the
# same code path as on a bf16-native machine), =0 answers no (fp32 by default). Unset: the CPU decides.
NATIVE_BF16_ENV = "PRUNING_NATIVE_BF16"


def native_bf16(device):
    """Whether `device` computes bf16 natively: CUDA with bf16 support, a CPU with AVX512-BF16 or AMX (or as
    NATIVE_BF16_ENV says). Elsewhere bf16 autocast is emulated and slower than fp32 (14x on an AVX2-only CPU)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    forced = os.environ.get(NATIVE_BF16_ENV, "")
    if device.type == "cpu" and forced in ("0", "1"):
        return forced == "1"
    if forced:
        raise ValueError(f"{NATIVE_BF16_ENV}={forced}: expected 1 (bf16 by default, as a bf16-native CPU), 0 (fp32 "
                         "by default) or unset (the CPU decides)")
    cpu = getattr(torch, "cpu", None)
    checks = [getattr(cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    return device.type == "cpu" and any(check is not None and check() for check in checks)


def resolve_amp(amp, device):
    """--amp / --no-amp as given, else bf16 where it is native."""
    return native_bf16(device) if amp is None else bool(amp)


class Trainer:
    """One run: model, optimizer, schedule, hooks, logs and the resume checkpoint under `cfg.output`."""

    def __init__(self, cfg, model, train_loader, val_loader, ctx, hooks=(), param_rule=None, deadline=None):
        """`deadline`: time.monotonic() seconds by which the run must have stopped (the run skeleton turns
        --time-limit into one deadline for the whole process, its fine-tune included); None: no limit."""
        self.cfg, self.ctx, self.hooks = cfg, ctx, list(hooks)
        self.deadline, self.eval_seconds, self.step_seconds = deadline, 0.0, 0.0
        self.train_loader, self.val_loader = train_loader, val_loader
        self.device = ctx.device
        self.log = RunLog(cfg.output, enabled=ctx.is_main)
        cuda = self.device.type == "cuda"
        if cfg.deterministic:
            torch.use_deterministic_algorithms(True)
            torch.backends.cudnn.benchmark = False
        elif cuda:
            torch.backends.cudnn.benchmark = True
        self.amp = resolve_amp(cfg.amp, self.device)
        if cfg.sync_bn:
            if not (cuda and ctx.distributed):
                raise ValueError("--sync-bn needs several CUDA processes (torchrun on GPUs)")
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        self.channels_last = cfg.channels_last
        model = model.to(self.device, memory_format=torch.channels_last if self.channels_last else torch.preserve_format)
        self.model = model  # the plain module: hooks and evaluation use it
        self.ddp_model = DistributedDataParallel(model, device_ids=[self.device] if cuda else None) \
            if ctx.distributed else model
        self.steps_per_epoch = len(train_loader)
        if self.steps_per_epoch == 0:
            raise ValueError(f"the training set gives no full batch of {cfg.batch_size} on each of "
                             f"{ctx.world_size} rank(s); lower --batch-size")
        self.param_rule = param_rule
        self.optimizer = torch.optim.SGD(param_groups(model, cfg, param_rule), lr=cfg.lr, momentum=cfg.momentum)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lr_factor(cfg, self.steps_per_epoch))
        self.criterion = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
        self.step = 0
        self.total_steps = cfg.epochs * self.steps_per_epoch
        if cfg.max_steps is not None:
            self.total_steps = min(self.total_steps, cfg.max_steps)
        self.checkpoint_path = os.path.join(cfg.output, "checkpoint.pth")
        self.metrics = {}

    def out_of_time(self):
        """Whether the time left before the deadline is less than what the run keeps in hand (TIME_MARGIN_S); rank
        0 decides for all, so every rank stops at the same step."""
        if self.deadline is None:
            return False
        need = TIME_MARGIN_S + 2 * self.eval_seconds + 3 * self.step_seconds
        return bool(broadcast_object(self.deadline - time.monotonic() < need))

    def stop_for_time(self):
        """Checkpoint here and stop: the same command continues from this step, bitwise (NotFinished)."""
        self.save_checkpoint()
        self.log.log(f"time limit: stopped at step {self.step} of {self.total_steps}, checkpoint {self.checkpoint_path}")
        self.log.close()
        raise NotFinished(f"stopped at step {self.step} of {self.total_steps} before its --time-limit; "
                          f"{self.checkpoint_path} holds the run")

    def request_stop(self):
        """End the run after the current step (a hook's decision: AOFP stops once its MACs target is met)."""
        self.total_steps = self.step

    # --- checkpointing -------------------------------------------------------------------------
    def config_dict(self):
        return dataclasses.asdict(self.cfg)

    def save_checkpoint(self):
        if not self.ctx.is_main:
            return
        save_checkpoint(self.checkpoint_path, {
            "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(), "step": self.step,
            "hooks": [h.state_dict() for h in self.hooks], "rng": rng_state(), "config": self.config_dict(),
            "metrics": self.metrics})

    def try_resume(self):
        if not os.path.exists(self.checkpoint_path):
            return False
        ckpt = load_checkpoint(self.checkpoint_path)
        old, new = ckpt.get("config", {}), self.config_dict()
        changed = [k for k in new if k not in RESUMABLE_CHANGES and old.get(k) != new[k]
                   and not (isinstance(new[k], tuple) and tuple(old.get(k, ())) == new[k])]
        if changed:
            diffs = ", ".join(f"{k}: {old.get(k)!r} -> {new[k]!r}" for k in changed)
            raise CheckpointError(f"{self.checkpoint_path} belongs to a run with other settings ({diffs}); "
                                  "re-run with the same settings, or choose another --output")
        self.model.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        self.step, self.metrics = ckpt["step"], ckpt.get("metrics", {})
        for hook, state in zip(self.hooks, ckpt["hooks"]):
            hook.load_state_dict(state)
        set_rng_state(ckpt["rng"])
        self.log.log(f"resumed from {self.checkpoint_path} at step {self.step} of {self.total_steps}"
                     + (" (training had finished)" if self.step >= self.total_steps else ""))
        return True

    # --- the loop ------------------------------------------------------------------------------
    def fit(self):
        """Train (resuming when a checkpoint is there), evaluate, run the end hooks; return metrics."""
        cfg = self.cfg
        if self.ctx.is_main:
            write_json(os.path.join(cfg.output, "config.json"), self.config_dict(), indent=2)
        resumed = self.try_resume()
        for h in self.hooks:
            h.on_start(self)
        if not resumed:
            precision = ("bf16 autocast" if self.amp else "fp32") + (" (the default here)" if cfg.amp is None else "")
            self.log.log(f"training {cfg.epochs} epochs x {self.steps_per_epoch} steps, global batch "
                         f"{cfg.batch_size} on {self.ctx.world_size} process(es), device {self.device}, {precision}"
                         f"{', channels_last' if self.channels_last else ''}")
        while self.step < self.total_steps:
            epoch, start = divmod(self.step, self.steps_per_epoch)
            self.train_one_epoch(epoch, start)
            if self.step % self.steps_per_epoch == 0:
                for h in self.hooks:
                    h.on_epoch_end(self, epoch)
                if self._should_eval(epoch) and self.step < self.total_steps:
                    self.metrics = self.evaluate()
                    self.log.log(f"epoch {epoch + 1}/{cfg.epochs}: top1 {self.metrics['top1']:.2f} "
                                 f"top5 {self.metrics['top5']:.2f} loss {self.metrics['loss']:.4f}")
                    self.log.scalars(self.step, **{f"val/{k}": v for k, v in self.metrics.items()})
            self.save_checkpoint()
            if self.out_of_time():  # at an epoch's end, after its hooks: what a resumed run expects
                self.stop_for_time()
        self.metrics = self.evaluate()
        self.log.scalars(self.step, **{f"val/{k}": v for k, v in self.metrics.items()})
        self.log.log(f"final (step {self.step}): top1 {self.metrics['top1']:.2f} top5 {self.metrics['top5']:.2f} "
                     f"loss {self.metrics['loss']:.4f} on {self.metrics['samples']} images")
        for h in self.hooks:
            h.on_end(self)
        self.log.close()
        return self.metrics

    def _should_eval(self, epoch):
        cfg = self.cfg
        return (epoch + 1) % cfg.eval_every == 0 or epoch >= cfg.epochs - cfg.eval_last

    def evaluate(self):
        t = time.monotonic()
        metrics = evaluate(self.model, self.val_loader, self.device, self.amp)
        self.eval_seconds = max(self.eval_seconds, time.monotonic() - t)
        return metrics

    def train_one_epoch(self, epoch, start=0):
        cfg, loader = self.cfg, self.train_loader
        self.ddp_model.train()
        loader.set_epoch(epoch)
        stop = min(self.steps_per_epoch, self.total_steps - epoch * self.steps_per_epoch)
        sums = torch.zeros(3, device=self.device, dtype=torch.float64)  # loss, correct, count since last log
        first_bad = torch.full((), -1, dtype=torch.long, device=self.device)
        tick, seen = time.perf_counter(), 0
        bar = progress(loader.batches(start), stop - start, f"epoch {epoch + 1}/{cfg.epochs}", self.ctx.is_main)
        for i, (images, labels) in enumerate(bar, start=start):
            if i >= stop:
                break
            if self.channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            for h in self.hooks:
                h.before_step(self, images, labels)
            with _autocast(self.device, self.amp):
                logits = self.ddp_model(images)
                loss = self.criterion(logits.float(), labels)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            for h in self.hooks:
                h.after_backward(self)
            self.optimizer.step()
            self.scheduler.step()
            self.step += 1
            for h in self.hooks:
                h.after_step(self)
            with torch.no_grad():
                first_bad = torch.where((first_bad < 0) & ~torch.isfinite(loss.detach()),
                                        torch.full_like(first_bad, self.step), first_bad)
                sums += torch.stack([loss.detach().double() * labels.numel(),
                                     (logits.argmax(1) == labels).sum().double(),
                                     torch.full((), float(labels.numel()), device=self.device, dtype=torch.float64)])
            seen += labels.numel()
            last = i + 1 == stop or self.step >= self.total_steps  # a hook may have requested the stop
            if self.step % cfg.log_every == 0 or last or self.step % cfg.ckpt_every == 0:
                self._check_finite(first_bad)
                loss_avg, correct, n = sums.tolist()
                rate = seen * self.ctx.world_size / (time.perf_counter() - tick)
                self.step_seconds = (time.perf_counter() - tick) * labels.numel() / max(1, seen)
                lr = self.optimizer.param_groups[0]["lr"] / self.optimizer.param_groups[0]["lr_factor"]
                if hasattr(bar, "set_postfix"):
                    bar.set_postfix(loss=f"{loss_avg / n:.3f}", acc=f"{100 * correct / n:.1f}", lr=f"{lr:.4g}",
                                    img_s=f"{rate:.0f}")
                self.log.scalars(self.step, **{"train/loss": loss_avg / n, "train/acc": 100 * correct / n,
                                               "train/lr": lr, "train/img_per_s": rate})
                if last:
                    self.log.log(f"epoch {epoch + 1}/{cfg.epochs} step {self.step}: train loss {loss_avg / n:.4f} "
                                 f"acc {100 * correct / n:.2f} lr {lr:.4g} {rate:.0f} img/s")
                sums.zero_()
                tick, seen = time.perf_counter(), 0
                if self.step % cfg.ckpt_every == 0 and not last:
                    self.save_checkpoint()
                if not last and self.out_of_time():  # mid-epoch; an epoch's last step stops after its hooks
                    if hasattr(bar, "close"):
                        bar.close()
                    self.stop_for_time()
            if last:
                break
        if hasattr(bar, "close"):
            bar.close()

    def _check_finite(self, first_bad):
        bad = int(first_bad)
        if bad >= 0:
            kept = (f"The last good checkpoint, {self.checkpoint_path}, is kept" if os.path.exists(self.checkpoint_path)
                    else "No checkpoint had been written yet, so a re-run starts from the beginning")
            msg = (f"the loss became NaN or inf at step {bad} (epoch {(bad - 1) // self.steps_per_epoch + 1}); "
                   f"stopped without saving. {kept}: lower --lr or check the data, then re-run")
            self.log.log(msg)
            raise NonFiniteLossError(msg)
