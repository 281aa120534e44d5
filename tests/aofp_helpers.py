"""What the AOFP tests share: src20's first internal conv with every other filter silenced, and the
original's two-pass damage (specs A2) written independently of aofp/probe.py."""
import copy

import torch
import torch.nn.functional as F

from helpers import random_model
from utils.pruning.channel_graph import arch_graph

LAYER = "stage1.block0.conv1.conv"  # src20's first internal conv: 16 filters
ZEROED = list(range(0, 16, 2))


def zero_filters(model, conv, filters):
    """Filters that output exactly 0 (conv rows, BN weight and bias): masking them does no damage."""
    graph = arch_graph("src20")
    bn = next(p.bn for p in graph.group_of(conv).producers if p.conv == conv)
    with torch.no_grad():
        for t in (model.get_submodule(conv).weight, model.get_submodule(bn).weight, model.get_submodule(bn).bias):
            t[filters] = 0
    return model


def half_zero_model():
    return zero_filters(random_model("src20", seed=3), LAYER, ZEROED)


# The independent damage: the original's two passes through the scorer (specs A2), in float64.
def _per_channel(v, mask, block):
    """v times a per-channel mask: a conv map (N, C, H, W), or flattened columns (N, C*block), channel-major."""
    mask = mask.to(v.dtype)
    if v.dim() == 4:
        return v * mask[None, :, None, None]
    return (v.reshape(v.shape[0], mask.numel(), block) * mask[None, :, None]).reshape(v.shape)


@torch.no_grad()
def original_damage(x, keep, drawn, scorer, bn, relu, scorer_keep, bn_mode, block=1):
    """t = ||Z - Z'||^2 / ||Z||^2 as the original computes it: the scorer's module sequence run on the base
    input and on the input with the drawn filters also zeroed; BN in train mode, each pass with its own
    batch statistics ("own") or both with the base pass's ("base"); ReLU; times the scorer's own base mask."""
    scorer = copy.deepcopy(scorer).double()
    base = _per_channel(x.double(), keep, block)
    ablated = _per_channel(base, ~drawn, block)
    ys = [scorer(v) for v in (base, ablated)]
    if bn is not None:
        w, b, eps = bn.weight.double(), bn.bias.double(), bn.eps
        if bn_mode == "own":
            ys = [F.batch_norm(y, None, None, w, b, True, 0.0, eps) for y in ys]
        else:
            mean = ys[0].mean((0, 2, 3), keepdim=True)
            var = ys[0].var((0, 2, 3), unbiased=False, keepdim=True)
            ys = [(y - mean) / torch.sqrt(var + eps) * w[None, :, None, None] + b[None, :, None, None] for y in ys]
    if relu:
        ys = [y.relu() for y in ys]
    if scorer_keep is not None:
        ys = [_per_channel(y, scorer_keep, 1) for y in ys]
    z, z_abl = ys
    return float((z - z_abl).square().sum() / z.square().sum())
