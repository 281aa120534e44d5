"""C-SGD's conversion: one filter per cluster (the members' mean), consumers' inputs summed over the
cluster, residual junctions merged once. A thin call into utils.surgery, plus the proof it is exact."""

from base_model import build_model
from utils.report import conversion_summary, max_logit_diff
from utils.surgery import collapse, merge, narrow


def convert_state(state, graph, clusters):
    """(narrow state dict, deps) from a C-SGD-trained state dict and {group id: clusters}."""
    state = {k: v.detach().cpu() for k, v in state.items()}
    return narrow(state, graph, {int(gid): merge(c) for gid, c in clusters.items()})


def convert_model(model, arch, graph, clusters, loader=None, max_batches=4, num_classes=None):
    """Convert a trained model; return (narrow model in eval mode, summary dict with the printed lines).

    With a loader, the summary carries the largest logit difference on its first batches, against the
    trained net (what is left of the within-cluster deviation shows there) and against the trained net
    with every cluster averaged (`exact_diff`: the surgery itself, float round-off only)."""
    state, deps = convert_state(model.state_dict(), graph, clusters)
    like = next(model.parameters())
    narrow_model = _built(arch, deps, num_classes, state, like)
    diff = exact = float("nan")
    if loader is not None:
        diff = max_logit_diff(model, narrow_model, loader, max_batches)
        decisions = {int(gid): merge(c) for gid, c in clusters.items()}
        averaged = {k: v.detach().cpu() for k, v in model.state_dict().items()}
        averaged = _built(arch, list(model.deps), num_classes, collapse(averaged, graph, decisions), like)
        exact = max_logit_diff(averaged, narrow_model, loader, max_batches)
    info = conversion_summary(arch, list(model.deps), deps, diff, num_classes)
    info["exact_diff"] = exact
    info["lines"].insert(1, f"max |logit difference| cluster-averaged trained net vs converted: {exact:.3g} "
                            "(the merge itself; the line above adds the within-cluster deviation left)")
    return narrow_model, info


def _built(arch, deps, num_classes, state, like):
    model = build_model(arch, deps, num_classes).to(like.dtype)
    model.load_state_dict(state)
    return model.to(like.device).eval()
