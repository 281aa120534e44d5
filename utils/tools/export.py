"""ONNX export of a (converted) network in its deploy form: every BN fused into its conv, eval mode,
a dynamic batch dimension. `check_onnx` runs the file in ONNX Runtime and compares with PyTorch.

    python -m utils.tools.export resrep_models/src56_train/finish_converted.hdf5            # -> ..._converted.onnx
    python -m utils.tools.export FILE.hdf5 -o model.onnx --batch 8
"""
import contextlib
import io
import os
import warnings

import torch

from base_model import get_arch
from utils.atomic import atomic_write
from utils.command import ArgumentParser, RunError, run_main

from .deploy import deploy_form
from .store import model_from_hdf5

INPUT, OUTPUT = "images", "logits"


def export_onnx(model, arch, path, num_classes=None, quiet=True):
    """Write the BN-fused form of `model` to `path` (atomically); return the fused PyTorch model."""
    fused = deploy_form(model, arch, num_classes).cpu().float()
    size = get_arch(arch).input_size
    example = torch.randn(2, 3, size, size)
    batch = torch.export.Dim("batch", min=1)

    def write(tmp):
        # The exporter prints a line per phase; a comparison of five models does not need forty.
        out = io.StringIO() if quiet else None
        with contextlib.redirect_stdout(out) if quiet else contextlib.nullcontext(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(fused, (example,), tmp, dynamo=True, external_data=False, input_names=[INPUT],
                              output_names=[OUTPUT], dynamic_shapes=({0: batch},), verbose=False)

    atomic_write(path, write)
    return fused


def onnx_session(path, threads=None):
    """An ONNX Runtime session on the CPU execution provider; `threads` intra-op threads (default: ONNX
    Runtime's, one per physical core)."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise RunError("ONNX Runtime is not installed: pip install onnxruntime (requirements.txt)") from None
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
        # Timed in turns with PyTorch: idle threads that spin after a run would take the next turn's cores.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(os.fspath(path), sess_options=options, providers=["CPUExecutionProvider"])


@torch.no_grad()
def check_onnx(path, fused, images):
    """Largest |logit difference| between ONNX Runtime running `path` and PyTorch running `fused`."""
    session = onnx_session(path)
    got = session.run([OUTPUT], {INPUT: images.cpu().float().numpy()})[0]
    want = fused.eval()(images.cpu().float()).numpy()
    if got.shape != want.shape:
        raise RuntimeError(f"{path}: ONNX Runtime gave logits of shape {got.shape}, PyTorch {want.shape}")
    return float(abs(got - want).max())


def main(argv=None):
    p = ArgumentParser(description=__doc__)
    p.add_argument("file", help="an hdf5 weight file (a converted network carries its deps)")
    p.add_argument("-a", "--arch", help="the arch, when the file does not say")
    p.add_argument("-o", "--output", help="the .onnx file (default: beside the hdf5, same name)")
    p.add_argument("--batch", type=int, default=4, help="images in the ONNX Runtime check (default %(default)s)")
    args = p.parse_args(argv)
    model, arch, deps = model_from_hdf5(args.file, args.arch)
    out = args.output or os.path.splitext(args.file)[0] + ".onnx"
    fused = export_onnx(model, arch, out)
    size = get_arch(arch).input_size
    diff = check_onnx(out, fused, torch.randn(args.batch, 3, size, size, generator=torch.Generator().manual_seed(0)))
    print(f"{arch} deps {deps} -> {out} ({os.path.getsize(out):,} bytes, BN fused, dynamic batch); "
          f"max |logit difference| ONNX Runtime vs PyTorch on {args.batch} random images: {diff:.3g}")


if __name__ == "__main__":
    run_main(main)
