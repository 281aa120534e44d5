"""SFP's soft zeroing: rank each group's filters by L2 norm and set the weakest to zero, every few epochs.

Nothing is frozen: zeroed filters keep their optimizer momentum, so they move off zero on the next
step and may win their place back at the next zeroing (the set is re-chosen from the current norms).

Differences from the original code (he-y/soft-filter-pruning):
- Filters are ranked per channel *group*, not per conv. A residual-tied group (every conv feeding one
  residual sum) is ranked once, by the summed L2 norms of its convs, and the same channels are zeroed
  in all of them, so the small model is truly narrower. The original zeroes every conv on its own
  and can only narrow the residual stream with scatter-add blocks.
- By default (`bn="end"`) training is the original's: only conv weights are zeroed, so a zeroed
  channel still outputs its BN bias, gets gradient and may regrow (soft). At the final zeroing the
  BN weight and bias of the zeroed channels are zeroed too, so the reported accuracy is that of a
  model exactly equal to the small one. `bn="always"` zeroes BN at every zeroing: exact all along,
  but an exactly-0 channel before a ReLU gets no gradient (ReLU'(0) = 0) and a zero BN weight passes
  none to its conv, so zeroed filters move only by momentum and the pruning turns hard in practice.
  `bn="never"` (`--faithful`) is the original throughout: the small model drops the BN constants of
  the zeroed channels and differs, and both accuracies are reported.
- Layers are chosen by graph role (internal, residual, stem, fanout), never by parameter index.
"""
import torch

from utils.pruning.conv_groups import first_per_run, step
from utils.pruning.flops import align
from utils.pruning.zeroing import zero_channels
from utils.training.dist import broadcast_object
from utils.training.engine import Hook

BN_MODES = ("always", "end", "never")  # when the BN weight and bias of zeroed channels are zeroed too


def check_rate(rate):
    if not 0 < rate <= 1:
        raise ValueError(f"--rate {rate}: it is the keep ratio (0.7 keeps 70 % of each group's filters), "
                         "so it must be in (0, 1]")
    return rate


def num_pruned(width, rate, round_to=1):
    """int(N * (1 - rate)), floored as the original; never every channel, since rate > 0. With `round_to`
    the kept count N - int(N * (1 - rate)) moves to the nearest multiple (utils.pruning.flops.align)."""
    return width - align(width - int(width * (1 - rate)), width, round_to)


@torch.no_grad()
def filter_norms(model, group):
    """Per output channel: the sum over the group's convs of each filter's L2 norm (float64)."""
    total = torch.zeros(group.width, dtype=torch.float64)
    for p in group.producers:
        w = model.get_submodule(p.conv).weight
        total += w.detach().reshape(w.shape[0], -1).double().norm(dim=1).cpu()
    return total


def choose(model, groups, rate, round_to=1):
    """{group id: sorted channels to zero}: the int(N*(1-rate)) lowest summed norms (ties: lower index)."""
    out = {}
    for g in groups:
        n = num_pruned(g.width, rate, step(g, round_to))
        out[g.id] = sorted(first_per_run(torch.argsort(filter_norms(model, g), stable=True), n, g))
    return out


class SoftFilterZeroing(Hook):
    """Zero at the start, after epochs 0, k, 2k, ... (k = `epoch_prune`) and at the end (the final zeroing is what the
    small model is cut from). Choices are made on rank 0 and broadcast, so every rank zeroes the same."""

    def __init__(self, graph, groups="all", rate=0.7, epoch_prune=1, bn="end", reset_momentum=False,
                 zero_at_start=True, round_to=1):
        if bn not in BN_MODES:
            raise ValueError(f"--bn-zero {bn!r}: choose one of {', '.join(BN_MODES)}")
        if epoch_prune < 1:
            raise ValueError(f"--epoch-prune {epoch_prune}: must be at least 1 (epochs between zeroings)")
        self.graph, self.groups = graph, graph.select(groups)
        self.rate, self.epoch_prune, self.round_to = check_rate(rate), epoch_prune, round_to
        self.bn, self.reset_momentum, self.zero_at_start = bn, reset_momentum, zero_at_start
        self.pruned = {}  # group id -> channels zeroed at the last zeroing
        self.zeroed_step = None  # trainer step of the last zeroing
        self.zeroings = 0

    def apply(self, model, optimizer=None, log=print, when="", final=False):
        """Choose (on rank 0), broadcast, zero; return {group id: zeroed channels}."""
        pruned = broadcast_object(choose(model, self.groups, self.rate, self.round_to))
        zero_bn = self.bn == "always" or (self.bn == "end" and final)
        zero_channels(model, self.graph, pruned, zero_bn, optimizer if self.reset_momentum else None)
        changed = sum(len(set(v) - set(self.pruned.get(k, ()))) for k, v in pruned.items()) if self.pruned else None
        self.pruned, self.zeroings = pruned, self.zeroings + 1
        total = sum(g.width for g in self.groups)
        log(f"sfp zeroing {self.zeroings}{when}: {sum(map(len, pruned.values()))} of {total} channels in "
            f"{len(self.groups)} groups" + ("" if changed is None else f"; {changed} not zeroed last time"))
        return pruned

    def _apply(self, trainer, when, final=False):
        self.apply(trainer.model, trainer.optimizer, trainer.log.log, when, final)
        self.zeroed_step = trainer.step

    def on_start(self, trainer):
        if trainer.step == 0 and self.zero_at_start and self.zeroed_step is None:
            self._apply(trainer, " (start)")

    def on_epoch_end(self, trainer, epoch):
        """After epoch e (counted from 0), as the original: when e % epoch_prune == 0, and after the last of the
        schedule's epochs (a run cut short by --max-steps is zeroed in on_end, after its last checkpoint, so
        that a resumed run follows the schedule)."""
        if epoch % self.epoch_prune == 0 or epoch == trainer.cfg.epochs - 1:
            self._apply(trainer, f" (after epoch {epoch + 1})")

    def on_end(self, trainer):
        # Runs after the last resume checkpoint, so BN zeroing in "end" mode never leaks into a resumed
        # run. Training may also stop mid-epoch (--max-steps): zero once more. Then re-evaluate.
        if self.zeroed_step != trainer.step or self.bn == "end":
            self._apply(trainer, " (end)", final=True)
            trainer.metrics = trainer.evaluate()
            trainer.log.log(f"zeroed model: top1 {trainer.metrics['top1']:.2f} top5 {trainer.metrics['top5']:.2f}")

    def state_dict(self):
        return {"pruned": {int(k): list(v) for k, v in self.pruned.items()}, "zeroed_step": self.zeroed_step,
                "zeroings": self.zeroings}

    def load_state_dict(self, state):
        self.pruned = {int(k): list(v) for k, v in state.get("pruned", {}).items()}
        self.zeroed_step, self.zeroings = state.get("zeroed_step"), state.get("zeroings", 0)
