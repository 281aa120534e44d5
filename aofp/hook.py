"""AOFP as an engine hook: the search runs inside the normal training loop (the base path is trained
at the search's small learning rate, so fine-tuning happens while searching).

before_step: start the layers that are due and draw this step's ablation masks from a generator seeded
by (seed, step), identical on every rank and after a resume. The normal forward pass then measures
every active layer's damage (aofp/probe.py). after_step: average t over the ranks, credit it to the
masked filters, end the halves that are due, and stop the run as soon as the MACs fall below the target.

A searched "layer" is a channel group. An internal group has one producer and one consumer, the
original's case. A residual group (every conv feeding one residual sum, the stem included in a CIFAR
ResNet), the stem or a fanout group has several producers or consumers: its base mask and its drawn
ablation zero the same channels of the sum, gated at every consumer's input (nothing else reads
them: the identity shortcuts only carry them to the next sum), and its damage is measured at every
consumer. t is then the mean over the consumers of each one's relative squared error ||Z-Z'||^2/||Z||^2:
AOFP's damage to the next layer's output, where "the next layer" is every layer that reads the
channels, each weighted alike. A pooled ratio (summed errors over summed energies) would let the
consumer with the largest output (a conv on a 32x32 map) drown the one with the smallest (the logits),
and `--thresh` would no longer bound the relative damage of each next layer on average. One consumer
gives the original's t exactly.
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
    """The channel groups AOFP searches (`--groups`): by default the internal ones (one conv, one consumer);
    residual, stem and fanout groups are scored at all their consumers."""
    chosen = graph.select(groups)
    if not chosen:
        raise ValueError(f"--groups {groups}: the model has no such channel group to search")
    return chosen


class AOFPSearch(Hook):
    def __init__(self, graph, deps, groups="internal", iters_per_half=1000, thresh=0.01, warmup=500, macs_target=None,
                 seed=0, bn_mode="own"):
        if iters_per_half < 1:
            raise ValueError(f"iters_per_half {iters_per_half}: must be at least 1")
        if not thresh > 0:
            raise ValueError(f"thresh {thresh}: must be positive (the damage t is never negative)")
        if warmup < 0:
            raise ValueError(f"warm-up {warmup}: must not be negative")
        if macs_target is not None and not 0 < macs_target <= 1:
            raise ValueError(f"MACs target {macs_target}: the fraction of MACs to keep must be in (0, 1]")
        self.graph, self.deps = graph, list(deps)
        groups = target_groups(graph, groups) if isinstance(groups, str) else [graph.groups[g] for g in groups]
        if not groups:
            raise ValueError("AOFP has nothing to search: the list of channel groups is empty")
        unscored = [g for g in groups if not g.consumers]
        if unscored:
            raise ValueError(f"AOFP cannot search group {unscored[0].id} ({unscored[0].producers[0].conv}, role "
                             f"{unscored[0].role}): no layer consumes its channels, so nothing measures their damage")
        widths = graph.widths(self.deps)
        starts = start_steps(len(groups), iters_per_half, warmup)
        self.layers = [LayerSearch(g.producers[0].conv, g.id, widths[g.id], s, g.conv_groups)
                       for g, s in zip(groups, starts)]
        self.settings = dict(iters_per_half=iters_per_half, thresh=thresh, warmup=warmup,
                             macs_target=macs_target, seed=seed, bn_mode=bn_mode)
        self.base_macs = count(graph, self.deps)[0]
        self.stopped = None  # why the search ended: "target", "exhausted"; None while it runs
        self.moves = []  # (step, layer, number pruned, worst t, MACs ratio after)
        self.probes, self._active = [], []  # probes: one per (layer, consumer), in layer order
        self._probes_of = []  # per layer: its probes, one per consumer of its group

    # --- wiring ----------------------------------------------------------------------------------
    def attach(self, model):
        """Put the base-mask gates and damage probes on `model` (the plain module, not the DDP wrapper): one
        probe at every consumer of every searched group."""
        self.detach()
        relu_after = followed_by_relu(model)
        by_group = {layer.group: layer for layer in self.layers}
        for layer in self.layers:
            probes = []
            for consumer in self.graph.groups[layer.group].consumers:
                bn, own = None, None
                if consumer.module in self.graph.convs:  # a conv (or hidden linear) consumer produces a group
                    out = self.graph.group_of(consumer.module)  # too: its BN, and its own base mask
                    bn = next((p.bn for p in out.producers if p.conv == consumer.module), None)
                    own = by_group.get(out.id)
                post = (bn or consumer.module) in relu_after
                offset = consumer.offset(lambda gid: self.graph.groups[gid].width)
                probes.append(LayerProbe(model, layer, consumer, bn, post, own, self.settings["bn_mode"], offset))
            self._probes_of.append(probes)
            self.probes += probes
        return self

    def detach(self):
        for p in self.probes:
            p.remove()
        self.probes, self._probes_of = [], []

    def widths_now(self):
        return self.graph.deps_at(self.deps, {layer.group: layer.alive for layer in self.layers})

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
                            f"{s['thresh']}, stop below {s['macs_target']} of {self.base_macs:,} MACs")
        if self.stopped:
            trainer.request_stop()

    def before_step(self, trainer, images, labels):
        step = trainer.step
        for layer in self.layers:
            if layer.half_start < 0 and not layer.done and step >= layer.start_step:
                layer.restart(step)
        self._active = [(layer, probes) for layer, probes in zip(self.layers, self._probes_of) if layer.active]
        if not self._active:
            return
        g = torch.Generator().manual_seed(mix_seed(self.settings["seed"], step, DRAW_STREAM))
        drawn = torch.cat([layer.draw(g) for layer, _ in self._active]).to(trainer.device, torch.float32)
        for (layer, probes), d in zip(self._active, drawn.split([layer.width for layer, _ in self._active])):
            for p in probes:  # one draw per group: the same channels ablated at every consumer
                p.drawn, p.t = d, None

    def after_step(self, trainer):
        active, self._active = self._active, []
        if not active:
            return
        missing = [f"{layer.name} (at {p.scorer_name})" for layer, probes in active for p in probes if p.t is None]
        if missing:
            raise RuntimeError(f"AOFP: no damage measured for {', '.join(missing)}: its scorer did not run")
        # the mean over the group's consumers (see the module's docstring); one consumer: its t as it is
        t = torch.stack([probes[0].t if len(probes) == 1 else torch.stack([p.t for p in probes]).mean()
                         for _, probes in active])
        all_reduce_sum(t).div_(trainer.ctx.world_size)  # every rank then makes the same decisions
        for (layer, probes), ti in zip(active, t):
            layer.accumulate(ti, probes[0].drawn)
            for p in probes:
                p.drawn = p.t = None
        thresh, per_half = self.settings["thresh"], self.settings["iters_per_half"]
        for layer, _ in active:
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
            target = self.settings["macs_target"]
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
