"""Images/s of the training engine against a bare loop, and of the CIFAR data path alone.

    python benchmarks/bench_train.py [-a src56] [--steps 30] [--batch-size 64] [--device cpu]

The bare loop runs the same model, the same optimizer (same parameter groups) and batches already
in memory: no hooks, no logging, no augmentation. The engine runs `Trainer.train_one_epoch` on the
embedded cifar10-mini with its batched augmentation, progress bar and TensorBoard scalars. The two
alternate, `--repeats` times each, and the medians are compared, so a machine that is busy with
something else slows both alike.
"""
if not __package__:  # run as a file, not as a module: the repository root goes on the path, as with -m
    import os
    import sys
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import argparse
import json
import os
import statistics
import tempfile
import time

import torch

from base_model import build_model
from utils.command import ArgumentParser, run_main
from utils.training.data import make_loaders
from utils.training.dist import DistContext, resolve_device
from utils.training.engine import TrainConfig, Trainer, param_groups, resolve_amp


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def bare_loop(model, cfg, batches, device):
    opt = torch.optim.SGD(param_groups(model, cfg), lr=cfg.lr, momentum=cfg.momentum)
    crit = torch.nn.CrossEntropyLoss()
    model.train()
    sync(device)
    t = time.perf_counter()
    for x, y in batches:
        with torch.autocast(device.type, torch.bfloat16, enabled=resolve_amp(cfg.amp, device)):
            loss = crit(model(x).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    sync(device)
    return len(batches) * batches[0][1].numel() / (time.perf_counter() - t)


def engine_loop(model, cfg, train, val, device, steps):
    trainer = Trainer(cfg, model, train, val, DistContext(device=device))
    trainer.total_steps = steps
    sync(device)
    t = time.perf_counter()
    trainer.train_one_epoch(0)
    sync(device)
    trainer.log.close()
    return steps * cfg.batch_size / (time.perf_counter() - t)


def data_rate(loader, steps, device):
    sync(device)
    t = time.perf_counter()
    n = 0
    for i, (x, _) in enumerate(loader.batches()):
        n += x.shape[0]
        if i + 1 == steps:
            break
    sync(device)
    return n / (time.perf_counter() - t)


def main(argv=None):
    p = ArgumentParser(description=__doc__)
    p.add_argument("-a", "--arch", default="src56")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--device", default="auto")
    p.add_argument("--amp", action=argparse.BooleanOptionalAction, default=None,
                   help="bf16 autocast (default: where it is native, as the engine)")
    p.add_argument("--data", default="cifar10-mini")
    p.add_argument("--data-root")
    args = p.parse_args(argv)
    device = resolve_device(args.device)
    out = tempfile.mkdtemp(prefix="bench_train_")
    cfg = TrainConfig(batch_size=args.batch_size, lr=0.1, output=out, amp=args.amp, log_every=20)
    train, val = make_loaders(args.data, args.data_root, args.batch_size, device, 0, 1, 0, 4)
    steps = min(args.steps, len(train))
    batches = [b for _, b in zip(range(steps), train.batches())]
    torch.manual_seed(0)
    model = build_model(args.arch).to(device)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
        batches = [(x.contiguous(memory_format=torch.channels_last), y) for x, y in batches]
    bare_loop(model, cfg, batches[:3], device)  # warm-up (allocator, cuDNN autotune)
    bare, engine = [], []
    for _ in range(args.repeats):
        bare.append(bare_loop(model, cfg, batches, device))
        engine.append(engine_loop(model, cfg, train, val, device, steps))
    result = {"arch": args.arch, "device": str(device), "threads": torch.get_num_threads(), "batch": args.batch_size,
              "steps": steps, "bare_img_s": statistics.median(bare), "engine_img_s": statistics.median(engine),
              "data_img_s": statistics.median(data_rate(train, len(train), device) for _ in range(3))}
    result["ratio"] = result["engine_img_s"] / result["bare_img_s"]
    result["precision"] = "bf16 autocast" if resolve_amp(cfg.amp, device) else "fp32"
    print(f"{args.arch} batch {args.batch_size} on {device} ({result['threads']} threads, {result['precision']}, "
          f"channels_last), {steps} steps x "
          f"{args.repeats}: bare {result['bare_img_s']:.0f} img/s, engine {result['engine_img_s']:.0f} img/s, "
          f"ratio {result['ratio']:.3f}; {args.data} data path alone {result['data_img_s']:.0f} img/s")
    print(json.dumps(result))


if __name__ == "__main__":
    run_main(main)
