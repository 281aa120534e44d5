"""The centripetal update, as an engine hook that rewrites gradients after backward (after DDP's all-reduce).

For every clustered tensor W (n rows, one per output channel) with gradient G:

    G' = Gamma G + Lambda W,   Lambda = wd I + eps (I - Gamma)   (kernels)
                               Lambda = wd_b I + f eps (I - Gamma) (BN weight/bias, conv bias; f = 0.1)

Gamma is the cluster-mean projector. Rewritten as G' = Gamma (G - eps W) + (wd + eps) W, one scatter-mean
does it: index_add over the rows into one row per cluster, then gather back. Every member of a cluster gets
the same (bitwise) row, so the spread inside a cluster only ever shrinks, by the factor (1 - lr (wd + eps))
per plain-SGD step, while the cluster means follow ordinary SGD with L2 `wd`. The optimizer's own weight
decay is off for these tensors (`param_rule`), since Lambda carries it.

Every clustered tensor is updated at once: W and G of all of them gathered into two flat vectors, eps, wd + eps
and 1/|cluster| as per-element factors, and each element's slot (its cluster's row of its own tensor) as one
index, so one scatter-mean (index_add, index_select) serves all; then one copy back into the gradients. That is
about a dozen kernels per step rather than seven per tensor (src56: 171 tensors), with no host synchronisation.
"""
import torch

from utils.training.engine import Hook

VECTOR_FACTOR = 0.1  # the original's weaker pull on BN weight/bias ("helps in some cases")


class _Rows:
    """Scatter-mean over dim 0 for one clustering: labels and per-row 1/|cluster|."""

    def __init__(self, clusters, width, device):
        labels = torch.empty(width, dtype=torch.long)
        inv = torch.empty(width)
        for j, c in enumerate(clusters):
            labels[c] = j
            inv[c] = 1.0 / len(c)
        self.k, self.labels, self.inv = len(clusters), labels.to(device), inv.to(device)

    def mean(self, x):
        """Gamma x: every row replaced by its cluster's mean (rows of x weighted by 1/|cluster|)."""
        w = self.inv.reshape(-1, *[1] * (x.dim() - 1)).to(x.dtype)
        sums = torch.zeros((self.k, *x.shape[1:]), dtype=x.dtype, device=x.device).index_add_(0, self.labels, x * w)
        return sums.index_select(0, self.labels)


class _Gathered:
    """Every clustered tensor as one flat vector, and each element's slot: its cluster's row of its own tensor. The
    update is then a dozen kernels however many tensors there are: gather W and G, one scatter-mean over the
    slots, one copy back into the gradients."""

    def __init__(self, entries):
        slots, inv, eps, decay, self.params, self.sizes, base = [], [], [], [], [], [], 0
        for w, rows, e, d, _ in entries:
            n, width = w.shape[0], w[0].numel()
            cols = torch.arange(width, device=rows.labels.device)
            slots.append((rows.labels[:, None] * width + cols[None, :]).flatten() + base)
            inv.append(rows.inv[:, None].expand(n, width).flatten())
            eps.append(torch.full((n * width,), e))
            decay.append(torch.full((n * width,), d))
            self.params.append(w)
            self.sizes.append(n * width)
            base += rows.k * width
        device, dtype = entries[0][0].device, entries[0][0].dtype
        self.slots, self.total = torch.cat(slots).to(device, torch.int32), base  # half the index traffic of int64
        self.inv, self.eps, self.decay = (torch.cat(v).to(device, dtype) for v in (inv, eps, decay))
        # the same buffers every step: no allocation (and no page faults on a CPU), fixed addresses (CUDA graphs)
        self.w, self.g, self.new = (torch.empty(sum(self.sizes), device=device, dtype=dtype) for _ in range(3))
        self.sums = torch.empty(self.total, device=device, dtype=dtype)

    def apply(self):
        last = []  # per tensor: is its gradient channels_last (then its rows are read in that order)
        for p in self.params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            cl = p.grad.dim() == 4 and not p.grad.is_contiguous() and p.grad.is_contiguous(
                memory_format=torch.channels_last)
            if not (cl or p.grad.is_contiguous()):
                p.grad = p.grad.contiguous()
            last.append(cl)
        w = torch.cat([_flat(p, cl) for p, cl in zip(self.params, last)], out=self.w)
        g = torch.cat([_flat(p.grad, cl) for p, cl in zip(self.params, last)], out=self.g)
        g.addcmul_(w, self.eps, value=-1).mul_(self.inv)  # (G - eps W) / |cluster|
        self.sums.zero_().index_add_(0, self.slots, g)
        new = torch.index_select(self.sums, 0, self.slots, out=self.new).addcmul_(w, self.decay)
        torch._foreach_copy_([_flat(p.grad, cl) for p, cl in zip(self.params, last)], list(new.split(self.sizes)))


def _flat(t, channels_last):
    """t as one vector, its rows (dim 0) one after another: a view of t when t is contiguous in that layout
    (gradients are), each row's elements in memory order; every element's slot depends only on its row, so the
    order inside a row does not matter."""
    return (t.permute(0, 2, 3, 1) if channels_last else t).reshape(-1)


def clustered_tensors(graph, clusters):
    """[(group id, tensor name, kind)] for every tensor the update rewrites; kind 'kernel' or 'vector'."""
    out = []
    for gid in sorted(clusters):
        for p in graph.groups[gid].rows():  # a depthwise conv or gate follower is pulled with its cluster
            out.append((gid, f"{p.conv}.weight", "kernel"))
            out.append((gid, f"{p.conv}.bias", "vector"))
            if p.bn is not None:
                out.append((gid, f"{p.bn}.weight", "vector"))
                out.append((gid, f"{p.bn}.bias", "vector"))
    return out


class CentripetalHook(Hook):
    """C-SGD on the clustered groups of `graph` (built for the model's current widths).

    clusters: {group id: [[channel, ...], ...]}; strength: eps (the original's `centri_strength`);
    weight_decay / vector_weight_decay: L2 on kernels / on BN weight, bias (the recipe's values).
    """

    def __init__(self, graph, clusters, strength, weight_decay=1e-4, vector_weight_decay=0.0,
                 vector_factor=VECTOR_FACTOR):
        self.graph, self.clusters = graph, {int(g): c for g, c in clusters.items()}
        self.strength, self.weight_decay = float(strength), float(weight_decay)
        self.vector_weight_decay, self.vector_factor = float(vector_weight_decay), float(vector_factor)
        self.names = {name for _, name, _ in clustered_tensors(graph, self.clusters)}
        self.entries = None  # built on the model's device at on_start
        self.last_deviation = {}

    # --- engine hooks ------------------------------------------------------------------------------
    def param_rule(self, name, param, module):
        """Optimizer weight decay off for the clustered tensors: Lambda supplies their L2."""
        return {"weight_decay": 0.0} if name in self.names else None

    def on_start(self, trainer):
        self.bind(trainer.model)
        trainer.log.log(f"C-SGD: {len(self.clusters)} clustered groups, {len(self.entries)} tensors; eps "
                        f"{self.strength:g} (vectors x{self.vector_factor:g}), L2 {self.weight_decay:g} in the update")

    def after_backward(self, trainer):
        self.apply()

    def after_step(self, trainer):
        if trainer.step % trainer.cfg.log_every == 0:
            dev = self.deviation()
            trainer.log.scalars(trainer.step, **{f"csgd/max_dev_{k}": v for k, v in dev.items()})

    def on_epoch_end(self, trainer, epoch):
        dev = self.deviation()
        trainer.log.log("C-SGD max within-cluster deviation: " + ", ".join(f"{k} {v:.3g}" for k, v in dev.items()))

    def state_dict(self):
        return {"clusters": {str(g): c for g, c in self.clusters.items()}}

    def load_state_dict(self, state):
        # A resumed run keeps the clusters it started with.
        self.clusters = {int(g): c for g, c in state["clusters"].items()}
        self.names = {name for _, name, _ in clustered_tensors(self.graph, self.clusters)}

    # --- the update ---------------------------------------------------------------------------------
    def bind(self, model):
        params = dict(model.named_parameters())
        device = next(model.parameters()).device
        rows, self.entries = {}, []
        for gid, name, kind in clustered_tensors(self.graph, self.clusters):
            if name not in params:
                continue  # a conv without bias
            if gid not in rows:
                rows[gid] = _Rows(self.clusters[gid], self.graph.groups[gid].width, device)
            if kind == "kernel":
                eps, wd = self.strength, self.weight_decay
            else:
                eps, wd = self.vector_factor * self.strength, self.vector_weight_decay
            self.entries.append((params[name], rows[gid], eps, wd + eps, name))
        self.gathered = _Gathered(self.entries) if self.entries else None
        modules = dict(model.named_modules())
        self.buffers = [(getattr(modules[p.bn], key), rows[gid], key) for gid in self.clusters
                        for p in self.graph.groups[gid].rows() if p.bn is not None
                        for key in ("running_mean", "running_var")]
        return self

    @torch.no_grad()
    def apply(self):
        """G <- Gamma (G - eps W) + (wd + eps) W for every clustered tensor, all at once."""
        if self.gathered is not None:
            self.gathered.apply()

    @torch.no_grad()
    def deviation(self):
        """Largest |member - cluster mean| per kind: kernel, bn_weight, bias (BN and conv), bn_stats."""
        kinds = {"kernel": [], "bn_weight": [], "bias": [], "bn_stats": []}
        for w, rows, _, _, name in self.entries:
            kind = "kernel" if w.dim() > 1 else "bias" if name.endswith("bias") else "bn_weight"
            kinds[kind].append((w - rows.mean(w)).abs().max())
        for b, rows, _ in self.buffers:
            kinds["bn_stats"].append((b - rows.mean(b)).abs().max())
        kinds = {k: v for k, v in kinds.items() if v}
        values = torch.stack([torch.stack(v).max() for v in kinds.values()]).tolist() if kinds else []
        self.last_deviation = dict(zip(kinds, values))
        return self.last_deviation
