"""Measured latency: eval mode, warm-up, median of repeats; fp32 (and bf16 on CUDA, timed with CUDA
events); as trained (conv+BN) and in the BN-fused deploy form. Used by benchmarks/bench_latency.py and
by the comparison of the four methods."""
import copy
import statistics
import time

import torch

from utils.pruning.channel_graph import arch_graph
from utils.pruning.surgery import fuse_bn

FORMS = ("conv+bn", "fused")


def _timer(device):
    """A function that runs fn() once and returns its milliseconds (CUDA events on CUDA)."""
    if device.type == "cuda":
        def run(fn):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            return start.elapsed_time(end)
    else:
        def run(fn):
            t0 = time.perf_counter()
            fn()
            return 1000 * (time.perf_counter() - t0)
    return run


@torch.no_grad()
def interleaved_ms(models, batch, size, device, dtype=torch.float32, warmup=5, repeats=20):
    """{name: median ms per forward pass} of a (batch, 3, size, size) input. The models take turns pass
    by pass, so a change in the machine's speed (another job, clock scaling) hits them all alike."""
    device = torch.device(device)
    models = {k: m.to(device).eval() for k, m in models.items()}
    x = torch.randn(batch, 3, size, size, device=device)
    amp = torch.autocast("cuda", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16 and device.type == "cuda")
    timer, times = _timer(device), {k: [] for k in models}
    with amp:
        for i in range(warmup + repeats):
            for k, m in models.items():
                t = timer(lambda: m(x))
                if i >= warmup:
                    times[k].append(t)
    return {k: statistics.median(v) for k, v in times.items()}


def deploy_form(model, arch, num_classes=None):
    """A BN-fused copy (eval only); a model already fused (BN modules gone) is returned as a copy."""
    fused = copy.deepcopy(model).eval()
    if not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in fused.modules()):
        return fused
    return fuse_bn(fused, arch_graph(arch, num_classes))


def measure(models, arch, size, device, batches=(1, 64), repeats=20, forms=FORMS, num_classes=None, warmup=5):
    """{name: {(form, dtype, batch): median ms}} for {name: model} of one arch, timed interleaved, in the
    conv+BN and BN-fused forms; bf16 too on CUDA."""
    device = torch.device(device)
    by_form = {"conv+bn": models}
    if "fused" in forms:
        by_form["fused"] = {k: deploy_form(m, arch, num_classes) for k, m in models.items()}
    dtypes = [torch.float32] + ([torch.bfloat16] if device.type == "cuda" else [])
    out = {k: {} for k in models}
    for form in forms:
        for dt in dtypes:
            for b in batches:
                for k, ms in interleaved_ms(by_form[form], b, size, device, dt, warmup, repeats).items():
                    out[k][(form, str(dt).removeprefix("torch."), b)] = ms
    return out
