"""The proof every conversion prints: the largest logit difference between the trained network and
its converted narrow form on real images, with old/new deps, MACs and params."""
import torch

from .channel_graph import arch_graph
from .flops import count


@torch.no_grad()
def max_logit_diff(model_a, model_b, loader, max_batches=4):
    """Largest |logit difference| over the first batches of `loader` (both models in eval mode)."""
    was = model_a.training, model_b.training
    model_a.eval(), model_b.eval()
    worst = 0.0
    try:
        for i, (images, _) in enumerate(loader.batches()):
            if i >= max_batches:
                break
            worst = max(worst, (model_a(images).float() - model_b(images).float()).abs().max().item())
    finally:
        model_a.train(was[0]), model_b.train(was[1])
    return worst


def conversion_summary(arch, old_deps, new_deps, diff, num_classes=None):
    """A dict with MACs/params before and after, and the lines to print."""
    graph = arch_graph(arch, num_classes)
    (m0, p0), (m1, p1) = count(graph, old_deps), count(graph, new_deps)
    info = {"arch": arch, "old_deps": list(old_deps), "new_deps": list(new_deps), "max_logit_diff": diff,
            "macs_before": m0, "macs_after": m1, "params_before": p0, "params_after": p1,
            "macs_ratio": m1 / m0, "params_ratio": p1 / p0}
    info["lines"] = [
        f"max |logit difference| trained vs converted: {diff:.3g}",
        f"old deps: {list(old_deps)}",
        f"new deps: {list(new_deps)}",
        f"MACs {m0:,} -> {m1:,} ({m1 / m0:.2%}); params {p0:,} -> {p1:,} ({p1 / p0:.2%})",
    ]
    return info
