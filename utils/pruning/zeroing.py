"""Zeroing the channels a conversion will drop, in place: every tensor row that carries them.

SFP zeroes its weakest filters during training (and their momentum, in its hard variant); AOFP zeroes its
pruned filters so that the plain full-width network it saves computes what the masked one did; ResRep
zeroes its masked compactor rows to make the reference its conversion must equal.
"""
import torch


def follower_tensors(group):
    """Names of the followers' row tensors (depthwise and gate convs, their BN): a channel zeroed upstream stays
    0 through a depthwise conv only if its BN rows are zeroed too (its BN would output its bias)."""
    return [name for p in group.followers for name in (f"{p.conv}.weight", f"{p.conv}.bias") +
            ((f"{p.bn}.weight", f"{p.bn}.bias") if p.bn else ())]


def channel_tensors(group, bn=True):
    """Names of the tensors whose rows are the group's output channels: each producer's and follower's conv
    weight and bias, and (with `bn`) its BN weight and bias. A channel whose rows are all 0 outputs exactly 0
    (a follower's too: a depthwise conv's BN would turn the producer's 0 into its bias)."""
    names = []
    for p in group.rows():
        names += [f"{p.conv}.weight", f"{p.conv}.bias"]
        if bn and p.bn is not None:
            names += [f"{p.bn}.weight", f"{p.bn}.bias"]
    return names


@torch.no_grad()
def zero_rows(model, rows, optimizer=None):
    """Zero rows of named parameters in place: rows = {tensor name: channel indices}; names the model lacks
    (a conv without bias) are skipped. With an `optimizer`, the rows of their momentum too."""
    params = dict(model.named_parameters())
    for name, idx in rows.items():
        t = params.get(name)
        if t is None or not len(idx):
            continue
        index = torch.as_tensor(list(idx), dtype=torch.long, device=t.device)
        t.index_fill_(0, index, 0.0)
        buf = optimizer.state.get(t, {}).get("momentum_buffer") if optimizer is not None else None
        if buf is not None:
            buf.index_fill_(0, index, 0.0)


def zero_channels(model, graph, dropped, bn=True, optimizer=None):
    """Zero the channels {group id: channel indices} of `graph` in every producer (see channel_tensors)."""
    zero_rows(model, {name: idx for gid, idx in dropped.items() for name in channel_tensors(graph.groups[gid], bn)},
              optimizer)
