"""Measured latency: eval mode, warm-up, median of repeats; fp32 (and bf16 on CUDA, timed with CUDA
events); as trained (conv+BN) and in the BN-fused deploy form; optionally the fused form exported to ONNX and
run in ONNX Runtime, in the same turns. Used by benchmarks/bench_latency.py and by the comparison of the four
methods."""
import os
import statistics
import tempfile
import time

import torch

from .deploy import deploy_form
from .export import INPUT, OUTPUT, export_onnx, onnx_session

FORMS = ("conv+bn", "fused")
ORT = "onnxruntime"  # the 4th element of a timing's key when ONNX Runtime, not PyTorch, ran it


def ms_timer(device):
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
    timer, times = ms_timer(device), {k: [] for k in models}
    with amp:
        for i in range(warmup + repeats):
            for k, m in models.items():
                t = timer(lambda: m(x))
                if i >= warmup:
                    times[k].append(t)
    return {k: statistics.median(v) for k, v in times.items()}


class OnnxRuntimeModel(torch.nn.Module):
    """An ONNX Runtime session as a module (CPU tensors in and out, fp32), so interleaved_ms times it in turns
    with PyTorch models on the same input."""

    def __init__(self, session):
        super().__init__()
        self.session, self.input, self.outputs = session, INPUT, [OUTPUT]

    def forward(self, x):  # timed: nothing here but the session's run
        return torch.from_numpy(self.session.run(self.outputs, {self.input: x.numpy()})[0])


def onnx_runtime_models(models, arch, num_classes=None, threads=None):
    """{name: OnnxRuntimeModel} of each model's BN-fused form, exported to ONNX (utils/tools/export.py) and
    loaded in ONNX Runtime's CPU execution provider with `threads` intra-op threads (default: PyTorch's
    torch.get_num_threads(), so both engines get the same cores)."""
    threads = threads or torch.get_num_threads()
    out = {}
    with tempfile.TemporaryDirectory() as folder:  # a session holds its model in memory: the files can go
        for i, (k, m) in enumerate(models.items()):
            path = os.path.join(folder, f"{i}.onnx")
            export_onnx(m, arch, path, num_classes)
            out[k] = OnnxRuntimeModel(onnx_session(path, threads))
    return out


def measure(models, arch, size, device, batches=(1, 64), repeats=20, forms=FORMS, num_classes=None, warmup=5,
            onnx=False):
    """{name: {(form, dtype, batch): median ms}} for {name: model} of one arch, timed interleaved, in the
    conv+BN and BN-fused forms; bf16 too on CUDA. With `onnx` (CPU only), also {("fused", "float32", batch,
    ORT): median ms}: the fused form in ONNX Runtime, timed in the same turns as PyTorch's fused fp32 passes."""
    device = torch.device(device)
    if onnx and (device.type != "cpu" or "fused" not in forms):
        raise ValueError(f"ONNX Runtime is timed on the CPU, beside PyTorch's fused form: give device cpu (not "
                         f"{device}) and the fused form (forms: {', '.join(forms)})")
    by_form = {"conv+bn": models}
    if "fused" in forms:
        by_form["fused"] = {k: deploy_form(m, arch, num_classes) for k, m in models.items()}
    ort = onnx_runtime_models(by_form["fused"], arch, num_classes) if onnx else {}
    dtypes = [torch.float32] + ([torch.bfloat16] if device.type == "cuda" else [])
    out = {k: {} for k in models}
    for form in forms:
        for dt in dtypes:
            dtype = str(dt).removeprefix("torch.")
            turns = {(k, form): m for k, m in by_form[form].items()}
            if form == "fused" and dtype == "float32":
                turns.update({(k, ORT): m for k, m in ort.items()})
            for b in batches:
                for (k, engine), ms in interleaved_ms(turns, b, size, device, dt, warmup, repeats).items():
                    out[k][(form, dtype, b) + ((ORT,) if engine == ORT else ())] = ms
    return out
