"""ResRep during training: gradient resetting after every backward, mask updates every few steps.

The loss stays plain cross-entropy. After backward (and DDP's all-reduce), each compactor row q_j gets

    grad(q_j) = m_j * dL/dq_j + lasso_strength * q_j / ||q_j||

so a masked row (m_j = 0) only feels the group-lasso pull towards zero, from step 0 on. The mask
gates gradients only; the forward pass always uses the whole compactor.
"""
from dataclasses import asdict, dataclass

import torch

from utils.pruning.flops import count
from utils.training.dist import broadcast_object
from utils.training.engine import Hook

from .masks import select_masks

ZERO_NORM = 1e-12  # a row this small gets a proportionally smaller penalty: no 0/0 for an exact zero row


@dataclass
class ResRepConfig:
    macs_target: float = 0.471  # MACs to keep, as a fraction of the base (src56: 52.9 % pruned)
    lasso_strength: float = 1e-4  # lambda of the group-lasso gradient on every compactor row
    mask_interval: int = 200  # steps between mask updates
    before_mask_iters: int = 3906  # no masks before this step (original: 5 epochs)
    begin_granularity: int = 4  # at most this many more rows masked per update, until the target is met
    num_at_least: int = 1  # never mask a group below this many channels
    round_to: int = 1  # unmasked widths in multiples of this (--round-to)
    latency_target: float | None = None  # predicted latency to keep, as a fraction of the base's; replaces
    # macs_target (then None), the latency read from a per-layer table measured on the run's device
    latency_batch: int = 64  # the batch size the latency table is measured at


def check_config(cfg):
    """Refuse a setting out of range with one line naming its flag (written so that NaN fails too)."""
    lows = (("mask_interval", 1), ("begin_granularity", 1), ("num_at_least", 1), ("before_mask_iters", 0),
            ("round_to", 1), ("latency_batch", 1))
    for name, low in lows:
        if not getattr(cfg, name) >= low:
            raise ValueError(f"--{name.replace('_', '-')} {getattr(cfg, name)}: must be at least {low}")
    if not 0 <= cfg.lasso_strength < float("inf"):
        raise ValueError(f"--lasso-strength {cfg.lasso_strength}: must be a finite number, not negative")
    if cfg.latency_target is not None:
        if cfg.macs_target is not None:
            raise ValueError(f"--latency-target {cfg.latency_target}: it replaces --macs-target (--flops-target) "
                             f"{cfg.macs_target}; give one target")
        if not 0 < cfg.latency_target <= 1:
            raise ValueError(f"--latency-target {cfg.latency_target}: the fraction of the base's latency to keep must "
                             "be in (0, 1]")
    elif cfg.macs_target is None or not 0 < cfg.macs_target <= 1:
        raise ValueError(f"--macs-target {cfg.macs_target}: the fraction of the MACs to keep must be in (0, 1]")
    return cfg


@torch.no_grad()
def reset_gradients(groups, lasso_strength):
    """Rewrite every compactor's gradient in place: mask the task gradient, add the lasso direction."""
    for pg in groups:
        for comp in pg.compactors():
            w = comp.pwc.weight
            if w.grad is None:
                w.grad = torch.zeros_like(w)
            norm = torch.linalg.vector_norm(w, dim=(1, 2, 3), keepdim=True).clamp_min(ZERO_NORM)
            w.grad.mul_(comp.mask.view(-1, 1, 1, 1)).add_(w / norm, alpha=lasso_strength)


class ResRepHook(Hook):
    """Gradient resetting and mask selection for a model whose compactors are `groups`; with a latency target,
    `latency_table` (utils/tools/latency_table.py) predicts the latency of any widths."""

    def __init__(self, graph, base_deps, groups, cfg, latency_table=None):
        self.graph, self.base_deps, self.groups, self.cfg = graph, list(base_deps), groups, check_config(cfg)
        if cfg.latency_target is not None and latency_table is None:
            raise ValueError("a ResRep latency target needs a latency table")
        self.latency_table = latency_table
        self.base_macs = count(graph, base_deps)[0]
        self.base_ms = None if latency_table is None else latency_table.predict(graph, base_deps)
        self.updates = 0
        self.reached_at = None  # first step whose masks met the target

    def due(self, step):
        c = self.cfg
        return step > c.before_mask_iters and (step - c.before_mask_iters) % c.mask_interval == 0

    def after_backward(self, trainer):
        reset_gradients(self.groups, self.cfg.lasso_strength)

    def after_step(self, trainer):
        if self.due(trainer.step):
            self.update_masks(trainer)

    def masked_deps(self):
        """deps with every pruned group narrowed by its masked rows: the width after conversion."""
        widths = {pg.id: pg.group.width - len(pg.masked()) for pg in self.groups}
        return self.graph.deps_at(self.base_deps, widths)

    def latency_ratio(self, deps):
        """Predicted latency of `deps` as a fraction of the base's (None without a latency table)."""
        return None if self.latency_table is None else self.latency_table.predict(self.graph, deps) / self.base_ms

    def update_masks(self, trainer=None):
        """Choose the masks on rank 0 (the weights are the same on every rank) and send them to all."""
        c = self.cfg
        chosen = None
        if trainer is None or trainer.ctx.is_main:
            norms = {pg.id: pg.norms() for pg in self.groups}
            masked_now = {pg.id: len(pg.masked()) for pg in self.groups}
            chosen = select_masks(self.graph, self.base_deps, norms, masked_now, c.macs_target,
                                  c.begin_granularity, c.num_at_least, c.round_to, self.latency_table,
                                  c.latency_target)
        chosen = broadcast_object(chosen)
        for pg in self.groups:
            pg.set_masked(chosen[pg.id])
        self.updates += 1
        deps = self.masked_deps()
        ratio, latency = count(self.graph, deps)[0] / self.base_macs, self.latency_ratio(deps)
        n = sum(len(v) for v in chosen.values())
        if trainer is not None:
            step = trainer.step
            trainer.log.scalars(step, **{"resrep/masked": n, "resrep/macs_ratio": ratio},
                                **({} if latency is None else {"resrep/latency_ratio": latency}))
            if latency is None:
                met, kind, target, now, also = ratio <= c.macs_target, "MACs", c.macs_target, f"{ratio:.4f}", ""
            else:
                met, kind, target = latency <= c.latency_target, "latency", c.latency_target
                now, also = f"predicted latency {latency:.4f}", f", MACs {ratio:.4f} of base"
            if self.reached_at is None and met:
                self.reached_at = step
                trainer.log.log(f"step {step}: {kind} target {target} met with {n} rows masked ({now} of base{also}); "
                                f"unmasked deps {deps}")
            elif self.updates == 1 or self.updates % 50 == 0:
                trainer.log.log(f"step {step}: mask update {self.updates}: {n} rows masked, "
                                f"{'MACs ' + now if latency is None else now} of base (target {target}){also}")
        return chosen

    def state_dict(self):
        # The masks themselves are buffers of the model, so they travel with the model's state.
        return {"updates": self.updates, "reached_at": self.reached_at, "config": asdict(self.cfg)}

    def load_state_dict(self, state):
        # runs from before --round-to and --latency-target
        old = {"round_to": 1, "latency_target": None, "latency_batch": 64, **state.get("config", {})}
        new = asdict(self.cfg)
        changed = [f"{k}: {old.get(k)!r} -> {v!r}" for k, v in new.items() if old.get(k) != v]
        if changed:
            raise ValueError("the resume checkpoint belongs to a ResRep run with other settings "
                             f"({', '.join(changed)}); re-run with the same settings, or choose another --output")
        self.updates, self.reached_at = state["updates"], state["reached_at"]
