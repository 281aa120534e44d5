"""Training-step throughput by precision and memory format: fp32 / bf16 autocast, NCHW / channels_last.

    python benchmarks/bench_precision.py [-a src20] [--batch-size 128] [--steps 6]

A plain loop (SGD with momentum, random images) so that only the arithmetic differs between the four
settings. Tells whether bf16 is native on this CPU (the engine's `--amp` default follows `native_bf16`).
"""
if not __package__:  # run as a file, not as a module: the repository root goes on the path, as with -m
    import os
    import sys
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import time

import torch

from base_model import build_model, get_arch
from utils.command import ArgumentParser, run_main
from utils.training.dist import resolve_device
from utils.training.engine import native_bf16


def throughput(arch, batch, steps, amp, channels_last, device):
    torch.manual_seed(0)
    size = get_arch(arch).input_size
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = build_model(arch).to(device, memory_format=fmt)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    x = torch.randn(batch, 3, size, size, device=device).contiguous(memory_format=fmt)
    y = torch.randint(0, model.num_classes, (batch,), device=device)

    def step():
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            loss = torch.nn.functional.cross_entropy(model(x).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(2):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return steps * batch / (time.perf_counter() - t)


def main(argv=None):
    p = ArgumentParser(description=__doc__)
    p.add_argument("-a", "--arch", default="src20")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--device", default="auto")
    args = p.parse_args(argv)
    if not (args.batch_size >= 1 and args.steps >= 1):
        raise ValueError("--batch-size and --steps must be at least 1")
    device = resolve_device(args.device)
    print(f"{args.arch}, batch {args.batch_size}, {device} ({torch.get_num_threads()} threads), native bf16: "
          f"{native_bf16(device)}")
    for amp in (False, True):
        for cl in (False, True):
            rate = throughput(args.arch, args.batch_size, args.steps, amp, cl, device)
            print(f"{'bf16 autocast' if amp else 'fp32':<14} {'channels_last' if cl else 'NCHW':<14} {rate:8.0f} img/s",
                  flush=True)


if __name__ == "__main__":
    run_main(main)
