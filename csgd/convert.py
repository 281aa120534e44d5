"""C-SGD's conversion: one filter per cluster (the members' mean), consumers' inputs summed over the
cluster, residual junctions merged once. A thin call into utils.surgery, plus the proof it is exact."""

from base_model import build_model
from utils.report import conversion_summary, max_logit_diff
from utils.surgery import merge, narrow


def convert_state(state, graph, clusters):
    """(narrow state dict, deps) from a C-SGD-trained state dict and {group id: clusters}."""
    state = {k: v.detach().cpu() for k, v in state.items()}
    return narrow(state, graph, {int(gid): merge(c) for gid, c in clusters.items()})


def convert_model(model, arch, graph, clusters, loader=None, max_batches=4, num_classes=None):
    """Convert a trained model; return (narrow model in eval mode, summary dict with the printed lines).

    With a loader, the summary carries the largest logit difference on its first batches."""
    state, deps = convert_state(model.state_dict(), graph, clusters)
    like = next(model.parameters())
    narrow_model = build_model(arch, deps, num_classes).to(like.dtype)
    narrow_model.load_state_dict(state)
    narrow_model = narrow_model.to(like.device).eval()
    diff = max_logit_diff(model, narrow_model, loader, max_batches) if loader is not None else float("nan")
    info = conversion_summary(arch, list(model.deps), deps, diff, num_classes)
    return narrow_model, info
