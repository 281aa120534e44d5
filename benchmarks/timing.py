"""What the step-time benchmarks share: one timed training loop."""
import time

import torch


def sync(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def seconds_per_step(model, opt, batches, device="cpu", after_backward=None):
    """Mean seconds per training step over `batches`; `after_backward()` runs where a method's hook would."""
    crit = torch.nn.CrossEntropyLoss()
    model.train()
    sync(device)
    t = time.perf_counter()
    for x, y in batches:
        loss = crit(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if after_backward is not None:
            after_backward()
        opt.step()
    sync(device)
    return (time.perf_counter() - t) / len(batches)
