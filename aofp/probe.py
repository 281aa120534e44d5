"""How AOFP touches the network: the base mask, and the damage of an ablation, at the scoring layer.

A pruned layer's base mask gates its channels at the input of the one layer that consumes them
(its scorer). Channel masks commute with ReLU, max-pool and flatten, so this is the original's
gating after the ReLU: pruned filters give exactly 0 and get no loss gradient, and slicing them
off later is exact.

The damage probe watches the scorer during the normal training pass: its (gated) input X and its
output. Then, without gradients and without calling the BN module (its running statistics stay
untouched), it recomputes the scorer's output with the drawn half of the search set also masked,
Z' from X*m, normalised as the original does by default (`bn_mode="own"`: each pass with its own batch
statistics, which partly cancels the ablation; `bn_mode="base"` normalises Z' with Z's statistics, which
measures 1.6x the damage of a random half on a trained src20: benchmarks/aofp_damage.py), then the ReLU that follows the scorer
and the scorer's own base mask, as the original's post-activation output. t = ||Z-Z'||^2 / ||Z||^2.
The ablated branch reaches only the scorer, so all layers are searched at once without interacting.

A group with several consumers (a residual sum read by every block's first conv, the next stage and
the classifier; a stem read by two convs) gets one probe per consumer, all sharing the group's base
mask and each step's drawn mask: zeroing a channel of the sum at every reader is zeroing it at every
producer. The hook averages their t (aofp/hook.py). When the scorer produces a searched group itself
(an internal conv, a projection or a block's last conv feeding a residual sum), that group's base mask
multiplies Z and Z', as the original's scorer multiplies by its own base mask.
"""
import torch
import torch.nn.functional as F
from torch import fx, nn

BN_MODES = ("own", "base")
RELU_FUNCTIONS = {F.relu, torch.relu}


def followed_by_relu(model):
    """Module paths whose output goes only into a ReLU (the scorer's post-activation)."""
    modules = dict(model.named_modules())
    out = set()
    for node in fx.symbolic_trace(model).graph.nodes:
        if node.op != "call_module" or len(node.users) != 1:
            continue
        user = next(iter(node.users))
        if (user.op == "call_module" and isinstance(modules.get(user.target), nn.ReLU)) \
                or (user.op == "call_function" and user.target in RELU_FUNCTIONS) \
                or (user.op == "call_method" and user.target in ("relu", "relu_")):
            out.add(node.target)
    return out


class LayerProbe:
    """The base-mask gate and the damage probe of one searched layer at one of its scorers, as hooks on it."""

    def __init__(self, model, layer, consumer, scorer_bn, post_relu, scorer_layer=None, bn_mode="own", offset=0):
        if bn_mode not in BN_MODES:
            raise ValueError(f"unknown BN mode {bn_mode!r}: choose one of {', '.join(BN_MODES)}")
        self.layer, self.kind, self.block, self.scorer_name = layer, consumer.kind, consumer.block, consumer.module
        self.scorer = model.get_submodule(consumer.module)
        self.bn = None if scorer_bn is None else model.get_submodule(scorer_bn)
        self.post_relu, self.scorer_layer, self.bn_mode = post_relu, scorer_layer, bn_mode
        self.offset = offset  # where the layer's channels start in the scorer's input (a concatenation's part)
        self.drawn = None  # float mask of the filters ablated this step (1 = masked); None = not measuring
        self.t = None
        self._x = None
        self.handles = [self.scorer.register_forward_pre_hook(self._gate),
                        self.scorer.register_forward_hook(self._seen)]
        if self.bn is not None:
            self.handles.append(self.bn.register_forward_hook(self._seen_bn))

    def remove(self):
        for h in self.handles:
            h.remove()

    def _channels(self, mask, dtype, x, fill):
        """A per-channel mask shaped for the scorer's input `x`; the channels of other parts of a concatenation
        get `fill`."""
        mask = mask.to(dtype)
        total = x.shape[1] // (1 if self.kind == "conv" else self.block)
        if total != mask.numel():
            mask = torch.cat([mask.new_full((self.offset,), fill), mask,
                              mask.new_full((total - self.offset - mask.numel(),), fill)])
        if self.kind == "conv":
            return mask.view(1, -1, 1, 1)
        return mask.repeat_interleave(self.block).view(1, -1)

    def _gate(self, module, args):
        if self.layer.alive < self.layer.width:
            return (args[0] * self._channels(self.layer.gate, args[0].dtype, args[0], 1.0), *args[1:])

    def _seen(self, module, args, output):
        if self.drawn is None:
            return
        if self.bn is None:
            self._measure(args[0], output)
        else:
            self._x = args[0]

    def _seen_bn(self, module, args, output):
        if self.drawn is None or self._x is None:
            return
        x, self._x = self._x, None
        self._measure(x, args[0])

    @torch.no_grad()
    def _measure(self, x, y):
        """t from the scorer's input x and its pre-BN output y (run right away: later ops work in place)."""
        with torch.autocast(x.device.type, enabled=False):
            x, y = x.float(), y.float()
            removed = x * self._channels(self.drawn, x.dtype, x, 0.0)
            w = self.scorer.weight.float()
            if self.kind == "conv":
                s = self.scorer
                delta = F.conv2d(removed, w, None, s.stride, s.padding, s.dilation, s.groups)
            else:
                delta = F.linear(removed, w)
            y_abl = y - delta  # linear in the input: the bias cancels
            z, z_abl = (y, y_abl) if self.bn is None else self._normalise(y, y_abl)
            if self.post_relu:
                z, z_abl = z.relu(), z_abl.relu()
            if self.scorer_layer is not None and self.scorer_layer.alive < self.scorer_layer.width:
                own = self.scorer_layer.gate.view(1, -1, *([1] * (z.dim() - 2)))
                z, z_abl = z * own, z_abl * own
            self.t = (z - z_abl).square().sum() / z.square().sum().clamp_min(1e-30)

    def _normalise(self, y, y_abl):
        bn, dims = self.bn, (0, 2, 3)
        shape = (1, -1, 1, 1)
        weight = torch.ones(y.shape[1], device=y.device) if bn.weight is None else bn.weight.float()
        bias = torch.zeros(y.shape[1], device=y.device) if bn.bias is None else bn.bias.float()
        if bn.training or bn.running_mean is None:
            mean, var = y.mean(dims), y.var(dims, unbiased=False)
        else:
            mean, var = bn.running_mean.float(), bn.running_var.float()
        if self.bn_mode == "own":  # each batch its own statistics (no running statistics involved)
            return tuple(F.batch_norm(v, None, None, weight, bias, True, 0.0, bn.eps) for v in (y, y_abl))
        scale = (weight / torch.sqrt(var + bn.eps)).view(shape)
        return tuple((v - mean.view(shape)) * scale + bias.view(shape) for v in (y, y_abl))
