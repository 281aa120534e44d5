"""The proof every conversion prints: the largest logit difference between a trained network and its
converted narrow form on real images, with old and new deps, MACs and params."""
import contextlib

import torch

from .flops import count


@contextlib.contextmanager
def strict_fp32():
    """TF32 off for convs and matmuls on CUDA (cuDNN uses it by default): with 10-bit mantissas an exact
    conversion would differ by about 1e-2 in the logits, which hides a real error of that size."""
    cudnn, matmul = torch.backends.cudnn, torch.backends.cuda.matmul
    before = matmul.allow_tf32
    matmul.allow_tf32 = False
    try:
        with cudnn.flags(enabled=cudnn.enabled, benchmark=cudnn.benchmark, deterministic=cudnn.deterministic,
                         allow_tf32=False):
            yield
    finally:
        matmul.allow_tf32 = before


@torch.no_grad()
def max_logit_diff(model_a, model_b, batches, max_batches=4):
    """Largest |logit difference| over the first `max_batches` of `batches` (images, or (images, labels)
    pairs), both models in eval mode (their modes are restored after), in strict fp32."""
    was = model_a.training, model_b.training
    model_a.eval(), model_b.eval()
    worst = 0.0
    try:
        for i, batch in enumerate(batches):
            if i >= max_batches:
                break
            images = batch[0] if isinstance(batch, (tuple, list)) else batch
            with strict_fp32():
                worst = max(worst, (model_a(images).float() - model_b(images).float()).abs().max().item())
    finally:
        model_a.train(was[0]), model_b.train(was[1])
    return worst


def conversion_summary(graph, old_deps, new_deps, diff, base_deps=None):
    """A dict with deps, MACs and params before and after (and relative to `base_deps`, the arch's
    unpruned widths, which a run that starts from an already narrow net differs from) and the logit
    difference, and its printed lines under "lines". `graph` is any channel graph of the arch."""
    (m0, p0), (m1, p1) = count(graph, old_deps), count(graph, new_deps)
    (mb, pb) = count(graph, old_deps if base_deps is None else base_deps)
    info = {"old_deps": list(old_deps), "new_deps": list(new_deps), "max_logit_diff": diff,
            "macs_before": m0, "macs_after": m1, "params_before": p0, "params_after": p1,
            "macs_ratio": m1 / m0, "params_ratio": p1 / p0,
            "macs_base": mb, "params_base": pb, "macs_ratio_to_base": m1 / mb, "params_ratio_to_base": p1 / pb}
    info["lines"] = [
        f"old deps: {list(old_deps)}",
        f"new deps: {list(new_deps)}",
        f"MACs {m0:,} -> {m1:,} ({m1 / m0:.2%}); params {p0:,} -> {p1:,} ({p1 / p0:.2%})",
    ]
    if (mb, pb) != (m0, p0):
        info["lines"].append(f"of the unpruned {mb:,} MACs and {pb:,} params: {m1 / mb:.2%} of the MACs, "
                             f"{p1 / pb:.2%} of the params")
    return info
