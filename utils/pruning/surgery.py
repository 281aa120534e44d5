"""The one surgery module: turn a state dict into a physically narrower one, group by group.

A decision for a channel group lists its output channels as clusters: output i of the narrow group
is the mean of cluster i's filters (a singleton cluster keeps a channel, so pruning is the special
case), and each consumer's input slices are summed over the cluster. Exact when every cluster's
filters are identical, which is what C-SGD trains towards and what pruning trivially satisfies.

A decision may also carry compactors (ResRep): a 1x1 conv Q after a producer's conv+BN is folded
first (BN fused into the conv, then K <- Q K, b <- Q b), and the bias is kept in an identity-like BN,
so the result stays in conv+BN form and loads into `build_model(arch, deps)`.

`fuse_bn_state` / `fuse_bn` fold every BN into its conv for deployment.
"""
from dataclasses import dataclass

import torch
from torch import nn

from .conv_groups import misfit

BN_KEYS = ("weight", "bias", "running_mean", "running_var")


class SurgeryError(ValueError):
    """A decision that does not fit its channel group."""


@dataclass
class Decision:
    clusters: list  # list of lists of channel indices; one narrow channel per cluster
    compactors: dict | None = None  # producer conv path -> compactor matrix Q (width x width)


def keep(indices):
    """Keep these channels (in this order), drop the rest."""
    return Decision([[int(i)] for i in indices])


def merge(clusters):
    """One channel per cluster: the members' mean filter; consumers sum the members' inputs."""
    return Decision([[int(i) for i in c] for c in clusters])


def fold(compactors, kept):
    """Fold each producer's compactor into its conv, then keep the rows `kept`."""
    return Decision([[int(i)] for i in kept], dict(compactors))


def _check(decision, group):
    seen, width = set(), group.width
    if group.role == "preact" and sorted(i for c in decision.clusters for i in c) != list(range(width)):
        raise SurgeryError(f"group {group.id} ({group.producers[0].conv}) is read by a pre-activation BatchNorm (its "
                           "bias would replace a dropped channel's 0); narrowing it is not supported")
    if not decision.clusters:
        raise SurgeryError(f"group {group.id} ({group.producers[0].conv}): a decision must keep at least one channel")
    for c in decision.clusters:
        if not c:
            raise SurgeryError(f"group {group.id} ({group.producers[0].conv}): empty cluster")
        for i in c:
            if not 0 <= i < width:
                raise SurgeryError(f"group {group.id} ({group.producers[0].conv}): channel {i} out of range 0..{width - 1}")
            if i in seen:
                raise SurgeryError(f"group {group.id} ({group.producers[0].conv}): channel {i} appears twice")
            seen.add(i)
    why = misfit(decision.clusters, group)
    if why:
        grouped = next(p.conv for p in group.followers if p.groups > 1)
        raise SurgeryError(f"group {group.id} ({group.producers[0].conv}) is read by the grouped conv {grouped} "
                           f"({group.conv_groups} conv groups): {why}")
    if decision.compactors is not None:
        names = {p.conv for p in group.producers}
        if set(decision.compactors) != names:
            raise SurgeryError(f"group {group.id}: compactors given for {sorted(decision.compactors)} "
                               f"but the group's convs are {sorted(names)}")
        for name, q in decision.compactors.items():
            if tuple(q.shape[:2]) != (width, width):
                raise SurgeryError(f"compactor of {name} has shape {tuple(q.shape)}, expected ({width}, {width})")


def _cluster_matrices(clusters, width):
    """Mean matrix A and sum matrix S, both (len(clusters), width), float64."""
    a = torch.zeros(len(clusters), width, dtype=torch.float64)
    s = torch.zeros_like(a)
    for k, c in enumerate(clusters):
        s[k, c] = 1.0
        a[k, c] = 1.0 / len(c)
    return a, s


def _mix_rows(m, t):
    return (m @ t.double().reshape(t.shape[0], -1)).reshape(m.shape[0], *t.shape[1:]).to(t.dtype)


def _mix_inputs(s, w, block):
    out, cols = w.shape[0], w.shape[1]
    w3 = w.double().reshape(out, cols // block, block, -1) if w.dim() == 2 else w.double().unsqueeze(2)
    mixed = torch.einsum("ocb...,kc->okb...", w3, s)
    return (mixed.reshape(out, -1) if w.dim() == 2 else mixed.squeeze(2)).to(w.dtype)


def _mix_consumer(state, graph, group, consumer, s):
    """The consumer's weight with the group's input columns mixed by s; reading a concatenation, only the
    group's columns, which start after the current widths of the parts before it."""
    w = state[f"{consumer.module}.weight"]
    if not consumer.parts:
        return _mix_inputs(s, w, consumer.block)
    width_now = lambda gid: state[f"{graph.groups[gid].producers[0].conv}.weight"].shape[0]  # noqa: E731
    start = consumer.block * consumer.offset(width_now)
    end = start + consumer.block * group.width
    return torch.cat([w[:, :start], _mix_inputs(s, w[:, start:end], consumer.block), w[:, end:]], 1)


def fused_conv_bn(state, conv, bn, eps):
    """(kernel, bias) of conv followed by BN in eval mode, in float64."""
    k = state[f"{conv}.weight"].double()
    b = state.get(f"{conv}.bias")
    b = torch.zeros(k.shape[0], dtype=torch.float64, device=k.device) if b is None else b.double()
    gamma, beta, mean, var = (state[f"{bn}.{key}"].double() for key in BN_KEYS)
    t = gamma / torch.sqrt(var + eps)
    return k * t.reshape(-1, 1, 1, 1), beta + (b - mean) * t


def _fold_compactor(state, producer, q):
    if producer.bn is None:
        raise SurgeryError(f"cannot fold a compactor into {producer.conv}: it has no BatchNorm")
    k, b = fused_conv_bn(state, producer.conv, producer.bn, producer.bn_eps)
    q = q.double().reshape(q.shape[0], q.shape[1])
    dtype = state[f"{producer.conv}.weight"].dtype
    state[f"{producer.conv}.weight"] = (q @ k.reshape(k.shape[0], -1)).reshape(k.shape).to(dtype)
    if f"{producer.conv}.bias" in state:  # a conv with a bias (torchvision's VGG) keeps one: now folded into the BN
        state[f"{producer.conv}.bias"] = torch.zeros(q.shape[0], dtype=dtype)
    # An identity-like BN carries the folded bias, so the narrow net keeps the base conv+BN form.
    n = q.shape[0]
    state[f"{producer.bn}.weight"] = torch.ones(n, dtype=dtype)
    state[f"{producer.bn}.bias"] = (q @ b).to(dtype)
    state[f"{producer.bn}.running_mean"] = torch.zeros(n, dtype=dtype)
    state[f"{producer.bn}.running_var"] = torch.full((n,), 1.0 - producer.bn_eps, dtype=dtype)


def _mix_grouped(w, a, s, groups):
    """A grouped conv's weight (width, width / G, kh, kw) with rows mixed by a and columns by s, conv group by conv
    group: block j is a_j W_j s_j^T. Exact because the decision keeps every cluster inside one conv group and as
    many clusters in each (conv_groups.misfit), and narrow() puts them in channel order: a and s are then block
    diagonal."""
    size, n = w.shape[1], a.shape[0] // groups
    blocks = [torch.einsum("kc,cd...,ld->kl...", a[j * n:(j + 1) * n, j * size:(j + 1) * size],
                           w[j * size:(j + 1) * size].double(), s[j * n:(j + 1) * n, j * size:(j + 1) * size])
              for j in range(groups)]
    return torch.cat(blocks).to(w.dtype)


def _mix_producers(state, group, m, s=None):
    """Rows of every producer and follower tensor (conv weight and bias, BN affine and statistics) <- m @ rows;
    with `s`, a grouped follower's columns are summed by s too (they read the group's channels)."""
    for p in group.rows():
        names = [f"{p.conv}.weight", f"{p.conv}.bias"] + ([f"{p.bn}.{k}" for k in BN_KEYS] if p.bn else [])
        for name in names:
            if name not in state:
                continue
            if s is not None and p.groups > 1 and name == f"{p.conv}.weight":
                state[name] = _mix_grouped(state[name], m, s, p.groups)
            else:
                state[name] = _mix_rows(m, state[name])


def narrow(state, graph, decisions):
    """Apply {group id: Decision} to a state dict; return (narrow state dict, deps)."""
    out = dict(state)
    for gid, decision in decisions.items():
        group = graph.groups[gid]
        _check(decision, group)
        if decision.compactors is not None:
            for p in group.producers:
                _fold_compactor(out, p, decision.compactors[p.conv])
        # a grouped conv's narrow conv groups are runs of consecutive channels: its clusters go in channel order
        clusters = sorted(decision.clusters, key=min) if group.conv_groups > 1 else decision.clusters
        a, s = _cluster_matrices(clusters, group.width)
        _mix_producers(out, group, a, s)
        for c in group.consumers:
            out[f"{c.module}.weight"] = _mix_consumer(out, graph, group, c, s)
    deps = [int(out[f"{conv}.weight"].shape[0]) for conv in graph.convs]
    return out, deps


def collapse(state, graph, decisions):
    """The full-width state dict whose every cluster's filters (conv and BN rows) are replaced by the
    cluster mean, consumers untouched: it computes exactly what `narrow` of the same decisions computes,
    which proves a merge exact even before training has made the members identical."""
    out = dict(state)
    for gid, decision in decisions.items():
        group = graph.groups[gid]
        _check(decision, group)
        a, s = _cluster_matrices(decision.clusters, group.width)
        spread = s.T @ a  # each member's row becomes its cluster's mean; channels in no cluster become 0
        _mix_producers(out, group, spread)
    return out


def fuse_bn_state(state, graph):
    """Every conv+BN as a conv with bias (the deploy form): BN entries removed."""
    out = dict(state)
    for group in graph.groups:
        for p in group.rows():
            if p.bn is None:
                continue
            k, b = fused_conv_bn(out, p.conv, p.bn, p.bn_eps)
            dtype = out[f"{p.conv}.weight"].dtype
            out[f"{p.conv}.weight"], out[f"{p.conv}.bias"] = k.to(dtype), b.to(dtype)
            for key in (*BN_KEYS, "num_batches_tracked"):
                out.pop(f"{p.bn}.{key}", None)
    return out


def fuse_bn(model, graph):
    """Fuse BN into conv in place (BN modules become Identity); the model is then eval-only."""
    state = fuse_bn_state({k: v.detach() for k, v in model.state_dict().items()}, graph)
    for group in graph.groups:
        for p in group.rows():
            if p.bn is None:
                continue
            conv = model.get_submodule(p.conv)
            conv.weight = nn.Parameter(state[f"{p.conv}.weight"])
            conv.bias = nn.Parameter(state[f"{p.conv}.bias"])
            parent, _, child = p.bn.rpartition(".")
            setattr(model.get_submodule(parent) if parent else model, child, nn.Identity())
    return model.eval()
