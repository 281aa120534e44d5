"""The one convert-and-prove step every method ends with: narrow the trained network through the surgery
module, build the narrow network from its deps, and measure the largest logit difference against the
method's own reference (what the conversion must equal: ResRep's net with its masked compactor rows zeroed,
C-SGD's with every cluster averaged, AOFP's and SFP's zeroed net) and against the trained net as it is.

Works on any nn.Module whose channel graph is known; `build(deps)` makes the narrow network.
"""
from dataclasses import dataclass

from torch import nn

from .proof import conversion_summary, max_logit_diff
from .surgery import narrow


@dataclass
class Conversion:
    model: nn.Module  # the narrow network, in eval mode, on the trained network's device and dtype
    state: dict  # its state dict (CPU tensors), as written to the converted file
    deps: list
    info: dict  # old/new deps, MACs, params, max_logit_diff (against the reference), raw_logit_diff
    lines: list  # the printed proof


def convert(model, graph, decisions, build, batches, reference=None, reference_name="the trained net", state=None,
            max_batches=4, base_deps=None):
    """Apply {group id: surgery.Decision} to `model` (or to `state`, its state dict without what the decisions
    fold in, such as ResRep's compactors) and prove the result on the first `max_batches` of `batches()`.
    With `base_deps` (the unpruned widths) MACs and params are also given relative to those."""
    state = {k: v.detach().cpu() for k, v in (model.state_dict() if state is None else state).items()}
    narrow_state, deps = narrow(state, graph, decisions)
    like = next(model.parameters())
    small = build(deps).to(dtype=like.dtype)  # before loading: float64 weights stay float64
    small.load_state_dict(narrow_state)  # strict: every name and shape
    small = small.to(like.device).eval()
    ref = model if reference is None else reference
    diff = max_logit_diff(ref, small, batches(), max_batches)
    raw = diff if ref is model else max_logit_diff(model, small, batches(), max_batches)
    old_deps = [int(state[f"{conv}.weight"].shape[0]) for conv in graph.convs]
    info = conversion_summary(graph, old_deps, deps, diff, base_deps)
    lines = info.pop("lines")
    if ref is model:
        lines.insert(0, f"max |logit difference| trained vs converted: {diff:.3g} (fp32)")
    else:
        lines[:0] = [f"max |logit difference| {reference_name} vs converted: {diff:.3g} (fp32; the conversion itself)",
                     f"max |logit difference| trained vs converted: {raw:.3g} (fp32; the trained net as it is)"]
    info.update(reference=reference_name, raw_logit_diff=raw)
    return Conversion(small, narrow_state, deps, info, lines)
