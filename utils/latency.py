"""Measured latency: eval mode, warm-up, median of repeats; fp32 (and bf16 on CUDA, timed with CUDA
events); as trained (conv+BN) and in the BN-fused deploy form. Used by benchmarks/bench_latency.py and
by the comparison of the four methods."""
import copy
import statistics
import time

import torch

from .channel_graph import arch_graph
from .surgery import fuse_bn

FORMS = ("conv+bn", "fused")


@torch.no_grad()
def latency_ms(model, batch, size, device, dtype=torch.float32, warmup=5, repeats=20):
    """Median milliseconds per forward pass of a (batch, 3, size, size) input."""
    device = torch.device(device)
    model = model.to(device).eval()
    x = torch.randn(batch, 3, size, size, device=device)
    amp = torch.autocast("cuda", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16 and device.type == "cuda")
    times = []
    with amp:
        for i in range(warmup + repeats):
            if device.type == "cuda":
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                model(x)
                end.record()
                torch.cuda.synchronize()
                t = start.elapsed_time(end)
            else:
                t0 = time.perf_counter()
                model(x)
                t = 1000 * (time.perf_counter() - t0)
            if i >= warmup:
                times.append(t)
    return statistics.median(times)


def deploy_form(model, arch, num_classes=None):
    """A BN-fused copy (eval only); a model already fused (BN modules gone) is returned as a copy."""
    fused = copy.deepcopy(model).eval()
    if not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in fused.modules()):
        return fused
    return fuse_bn(fused, arch_graph(arch, num_classes))


def measure(model, arch, size, device, batches=(1, 64), repeats=20, forms=FORMS, num_classes=None):
    """{(form, dtype, batch): median ms} for the conv+BN and BN-fused forms; bf16 too on CUDA."""
    device = torch.device(device)
    models = {"conv+bn": model, "fused": deploy_form(model, arch, num_classes) if "fused" in forms else None}
    dtypes = [torch.float32] + ([torch.bfloat16] if device.type == "cuda" else [])
    out = {}
    for form in forms:
        for dt in dtypes:
            for b in batches:
                out[(form, str(dt).removeprefix("torch."), b)] = latency_ms(models[form], b, size, device, dt,
                                                                          repeats=repeats)
    return out
