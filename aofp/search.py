"""AOFP's per-layer binary search (specs/aofp_sfp.md A3): the state of one layer, and its decisions.

Every half, a random half of the search set is masked each step and the damage t is credited to the
masked filters. After `iters_per_half` steps the filters are ranked by mean damage: if the best half
are all below `thresh` they are pruned for good and the search restarts over the survivors; otherwise
the search narrows to that half (masks of half the size next time), and once a single filter fails
it restarts from all survivors. A layer down to one filter is done.
"""
import torch

from utils.pruning.conv_groups import take_per_run


class LayerSearch:
    """The search state of one pruned channel group; every field is checkpointed."""

    def __init__(self, name, group, width, start_step, conv_groups=1):
        self.name = name  # the producer conv's module path
        self.group = group  # channel group id in the graph
        # a group read by a grouped conv: each of its G runs of width / G channels is searched alike, and every
        # decision takes the same count from each (utils/pruning/conv_groups.py)
        self.conv_groups = conv_groups
        self.start_step = start_step  # staggered: warm-up + interval * position in the list
        self.keep = torch.ones(width, dtype=torch.bool)  # the base mask: False = permanently pruned
        self.search = torch.zeros(width, dtype=torch.bool)  # the current search set
        self.acc_t = torch.zeros(width, dtype=torch.float64)  # accumulated damage (on the device)
        self.acc_n = torch.zeros(width, dtype=torch.float64)  # times each filter was masked
        self.half_start = -1  # step the current half began; -1 = not started
        self.done = False
        self.gate = self.keep.float()  # `keep` as a float mask on the device, for the forward pass

    @property
    def width(self):
        return self.keep.numel()

    @property
    def alive(self):
        return int(self.keep.sum())

    @property
    def active(self):
        return self.half_start >= 0 and not self.done

    def to(self, device):
        self.acc_t, self.acc_n = self.acc_t.to(device), self.acc_n.to(device)
        self.gate = self.keep.to(device=device, dtype=torch.float32)
        return self

    def set_keep(self, keep):
        """Replace the base mask (bool, the layer's width)."""
        self.keep = torch.as_tensor(keep, dtype=torch.bool).clone()
        self.gate = self.keep.to(device=self.gate.device, dtype=torch.float32)

    def restart(self, step):
        """Search over every survivor from `step` on; a layer with one filter left is done."""
        self.search = self.keep.clone()
        self.half_start = step
        self.acc_t.zero_(), self.acc_n.zero_()
        if self.alive <= self.conv_groups:
            self.done = True

    def draw(self, generator):
        """A random half (rounded down) of the search set in each run, as a bool mask of the layer's width."""
        drawn = torch.zeros(self.width, dtype=torch.bool)
        if self.conv_groups == 1:
            idx = self.search.nonzero().flatten()
            drawn[idx[torch.randperm(idx.numel(), generator=generator)[: idx.numel() // 2]]] = True
            return drawn
        # every run's search set has as many members: rank each run's by a random key (non-members last), one op
        keys = torch.rand(self.width, generator=generator).masked_fill(~self.search, 2.0).view(self.conv_groups, -1)
        half = int(self.search.sum()) // self.conv_groups // 2
        rows = torch.arange(self.conv_groups).unsqueeze(1) * keys.shape[1]
        drawn[(keys.argsort(1)[:, :half] + rows).flatten()] = True
        return drawn

    def accumulate(self, t, drawn):
        """Credit damage t (a device scalar) to the filters masked this step; no host sync."""
        self.acc_t += t.double() * drawn
        self.acc_n += drawn

    def mean_damage(self):
        """Mean t per filter; inf for a filter never masked (it can never be judged harmless)."""
        t, n = self.acc_t.cpu(), self.acc_n.cpu()
        return torch.where(n > 0, t / n.clamp_min(1), torch.full_like(t, float("inf")))

    def decide(self, step, thresh):
        """End of a half: returns ("prune", filters, worst t), ("narrow", ...) or ("restart", ...)."""
        damage = self.mean_damage()
        idx = self.search.nonzero().flatten()
        g = idx.numel() // self.conv_groups // 2  # half of each run's search set
        ranked = idx[torch.sort(damage[idx], stable=True).indices]  # ties keep the lower index first
        best = torch.tensor(take_per_run(ranked, g * self.conv_groups, self.width, self.conv_groups),
                            dtype=torch.long)
        worst = float(damage[best].max()) if g else float("inf")
        if g >= 1 and worst < thresh:
            keep = self.keep.clone()
            keep[best] = False
            self.set_keep(keep)
            self.restart(step)
            return "prune", best.tolist(), worst
        if g > 1:
            self.search = torch.zeros_like(self.keep)
            self.search[best] = True
            self.half_start = step
            self.acc_t.zero_(), self.acc_n.zero_()
            return "narrow", best.tolist(), worst
        self.restart(step)
        return "restart", [], worst

    def state_dict(self):
        return {"name": self.name, "group": self.group, "start_step": self.start_step, "keep": self.keep.clone(),
                "search": self.search.clone(), "acc_t": self.acc_t.cpu(), "acc_n": self.acc_n.cpu(),
                "half_start": self.half_start, "done": self.done}

    def load_state_dict(self, s):
        if (s["name"], s["group"], s["keep"].numel()) != (self.name, self.group, self.width):
            raise ValueError(f"the checkpoint's AOFP layer {s['name']} (width {s['keep'].numel()}) does not match "
                             f"{self.name} (width {self.width}): it belongs to another model")
        device = self.acc_t.device
        self.start_step, self.half_start, self.done = s["start_step"], s["half_start"], s["done"]
        self.keep, self.search = s["keep"].clone(), s["search"].clone()
        self.acc_t, self.acc_n = s["acc_t"].clone(), s["acc_n"].clone()
        self.to(device)


def start_steps(n_layers, iters_per_half, warmup):
    """Staggered starts: the k-th layer of the list starts at warmup + k * (iters_per_half // n)."""
    interval = iters_per_half // max(1, n_layers)
    return [warmup + interval * k for k in range(n_layers)]
