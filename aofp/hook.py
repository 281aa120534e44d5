"""AOFP as an engine hook: the search runs inside the normal training loop (the base path is trained
at the search's small learning rate, so fine-tuning happens while searching).

before_step: start the layers that are due and draw this step's ablation masks from a generator seeded
by (seed, step), identical on every rank and after a resume. The normal forward pass then measures
every active layer's damage (aofp/probe.py). after_step: average t over the ranks, credit it to the
masked filters, end the halves that are due, and stop the run as soon as the MACs fall below the target.
"""
import torch

from utils.pruning.flops import count
from utils.training.checkpoint import CheckpointError
from utils.training.data import mix_seed
from utils.training.dist import all_reduce_sum
from utils.training.engine import Hook

from .probe import LayerProbe, followed_by_relu
from .search import LayerSearch, start_steps

DRAW_STREAM = 0xA0F  # keeps the draws apart from the data's streams of the same seed


def target_groups(graph, groups="internal"):
    """The channel groups AOFP searches (`--groups`): by default the internal ones (one conv, one consumer)."""
    chosen = graph.select(groups)
    for g in chosen:
        if len(g.producers) != 1 or len(g.consumers) != 1:
            raise ValueError(f"--groups {groups}: AOFP needs one producer and one scoring layer per searched group; "
                             f"group {g.id} ({g.producers[0].conv}, role {g.role}) has {len(g.producers)} and "
                             f"{len(g.consumers)}")
    if not chosen:
        raise ValueError(f"--groups {groups}: the model has no such channel group to search")
    return chosen


class AOFPSearch(Hook):
    def __init__(self, graph, deps, groups="internal", iters_per_half=1000, thresh=0.01, warmup=500, flops_target=None,
                 seed=0, bn_mode="own"):
        if iters_per_half < 1:
            raise ValueError(f"iters_per_half {iters_per_half}: must be at least 1")
        if not thresh > 0:
            raise ValueError(f"thresh {thresh}: must be positive (the damage t is never negative)")
        if warmup < 0:
            raise ValueError(f"warm-up {warmup}: must not be negative")
        if flops_target is not None and not 0 < flops_target <= 1:
            raise ValueError(f"flops target {flops_target}: the fraction of MACs to keep must be in (0, 1]")
        self.graph, self.deps = graph, list(deps)
        groups = target_groups(graph, groups) if isinstance(groups, str) else [graph.groups[g] for g in groups]
        if not groups:
            raise ValueError("AOFP has nothing to search: the list of channel groups is empty")
        widths = graph.widths(self.deps)
        starts = start_steps(len(groups), iters_per_half, warmup)
        self.layers = [LayerSearch(g.producers[0].conv, g.id, widths[g.id], s) for g, s in zip(groups, starts)]
        self.settings = dict(iters_per_half=iters_per_half, thresh=thresh, warmup=warmup,
                             flops_target=flops_target, seed=seed, bn_mode=bn_mode)
        self.base_macs = count(graph, self.deps)[0]
        self.stopped = None  # why the search ended: "target", "exhausted"; None while it runs
        self.moves = []  # (step, layer, number pruned, worst t, MACs ratio after)
        self.probes, self._active = [], []

    # --- wiring ----------------------------------------------------------------------------------
    def attach(self, model):
        """Put the base-mask gates and damage probes on `model` (the plain module, not the DDP wrapper)."""
        self.detach()
        relu_after = followed_by_relu(model)
        by_conv = {layer.name: layer for layer in self.layers}
        for layer in self.layers:
            consumer = self.graph.groups[layer.group].consumers[0]
            bn = None
            if consumer.kind == "conv":
                bn = next((p.bn for p in self.graph.group_of(consumer.module).producers if p.conv == consumer.module),
                          None)
            post = (bn or consumer.module) in relu_after
            self.probes.append(LayerProbe(model, layer, consumer, bn, post, by_conv.get(consumer.module),
                                          self.settings["bn_mode"]))
        return self

    def detach(self):
        for p in self.probes:
            p.remove()
        self.probes = []

    def widths_now(self):
        deps = list(self.deps)
        for layer in self.layers:
            deps[self.graph.groups[layer.group].producers[0].index] = layer.alive
        return deps

    def macs_ratio(self):
        return count(self.graph, self.widths_now())[0] / self.base_macs

    def keeps(self):
        """Group id -> kept channel indices (the base masks)."""
        return {layer.group: layer.keep.nonzero().flatten().tolist() for layer in self.layers}

    # --- engine hooks ----------------------------------------------------------------------------
    def on_start(self, trainer):
        for layer in self.layers:
            layer.to(trainer.device)
        if not self.probes:
            self.attach(trainer.model)
        s = self.settings
        if trainer.step == 0:
            trainer.log.log(f"AOFP: {len(self.layers)} layers, starts at steps {self.layers[0].start_step}.."
                            f"{self.layers[-1].start_step}; {s['iters_per_half']} steps per half, thresh "
                            f"{s['thresh']}, stop below {s['flops_target']} of {self.base_macs:,} MACs")
        if self.stopped:
            trainer.request_stop()

    def before_step(self, trainer, images, labels):
        step = trainer.step
        for layer in self.layers:
            if layer.half_start < 0 and not layer.done and step >= layer.start_step:
                layer.restart(step)
        self._active = [p for p in self.probes if p.layer.active]
        if not self._active:
            return
        g = torch.Generator().manual_seed(mix_seed(self.settings["seed"], step, DRAW_STREAM))
        drawn = torch.cat([p.layer.draw(g) for p in self._active]).to(trainer.device, torch.float32)
        for p, d in zip(self._active, drawn.split([p.layer.width for p in self._active])):
            p.drawn, p.t = d, None

    def after_step(self, trainer):
        active, self._active = self._active, []
        if not active:
            return
        missing = [p.layer.name for p in active if p.t is None]
        if missing:
            raise RuntimeError(f"AOFP: no damage measured for {', '.join(missing)}: its scorer did not run")
        t = torch.stack([p.t for p in active])
        all_reduce_sum(t).div_(trainer.ctx.world_size)  # every rank then makes the same decisions
        for p, ti in zip(active, t):
            p.layer.accumulate(ti, p.drawn)
            p.drawn = p.t = None
        thresh, per_half = self.settings["thresh"], self.settings["iters_per_half"]
        for p in active:
            layer = p.layer
            if trainer.step - layer.half_start < per_half:
                continue
            action, filters, worst = layer.decide(trainer.step, thresh)
            if action != "prune":
                continue
            ratio = self.macs_ratio()
            self.moves.append((trainer.step, layer.name, len(filters), worst, ratio))
            trainer.log.log(f"step {trainer.step}: {layer.name} prunes {len(filters)} filters (mean t <= "
                            f"{worst:.4f}), {layer.alive} left{' (done)' if layer.done else ''}; "
                            f"MACs {ratio:.2%} of the base")
            trainer.log.scalars(trainer.step, **{"aofp/macs_ratio": ratio})
            target = self.settings["flops_target"]
            if target is not None and ratio < target:
                self._stop(trainer, "target", f"MACs {ratio:.2%} < target {target:.2%}")
                return
        if all(layer.done for layer in self.layers):
            self._stop(trainer, "exhausted", "every searched layer is down to one filter")

    def _stop(self, trainer, why, detail):
        self.stopped = why
        trainer.log.log(f"AOFP search ends at step {trainer.step}: {detail}")
        trainer.request_stop()

    def on_epoch_end(self, trainer, epoch):
        ratio = self.macs_ratio()
        trainer.log.log(f"AOFP after epoch {epoch + 1}: widths {[layer.alive for layer in self.layers]}, "
                        f"MACs {ratio:.2%} of the base, {len(self.moves)} pruning moves")

    # --- resume ----------------------------------------------------------------------------------
    def state_dict(self):
        return {"settings": dict(self.settings), "layers": [layer.state_dict() for layer in self.layers],
                "stopped": self.stopped, "moves": list(self.moves)}

    def load_state_dict(self, state):
        changed = {k: (state["settings"].get(k), v) for k, v in self.settings.items() if state["settings"].get(k) != v}
        if changed:
            diffs = ", ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in changed.items())
            raise CheckpointError(f"the resume checkpoint's AOFP search had other settings ({diffs}); "
                             "re-run with the same settings, or choose another --output")
        if len(state["layers"]) != len(self.layers):
            raise CheckpointError(f"the resume checkpoint searches {len(state['layers'])} layers, this run "
                             f"{len(self.layers)}: it belongs to another model")
        for layer, s in zip(self.layers, state["layers"]):
            layer.load_state_dict(s)
        self.stopped, self.moves = state["stopped"], list(state["moves"])
