"""What a run tells the user: console + plain-text log + TensorBoard scalars, on rank 0 only."""
import os
import sys
import time


class RunLog:
    def __init__(self, output, enabled=True, tensorboard=True):
        self.output, self.enabled = output, enabled
        self._tb, self._want_tb = None, tensorboard and enabled
        if enabled:
            os.makedirs(output, exist_ok=True)

    def log(self, msg):
        if not self.enabled:
            return
        line = f"[{time.strftime('%H:%M:%S')}] {msg}"
        print(line, flush=True)
        with open(os.path.join(self.output, "log.txt"), "a") as f:
            f.write(line + "\n")

    def scalars(self, step, **values):
        if not self._want_tb:
            return
        if self._tb is None:
            from torch.utils.tensorboard import SummaryWriter  # imported lazily: it is slow to import
            self._tb = SummaryWriter(os.path.join(self.output, "tb"))
        for k, v in values.items():
            self._tb.add_scalar(k, v, step)

    def close(self):
        if self._tb is not None:
            self._tb.close()
            self._tb = None


def progress(iterable, total, desc, enabled):
    """A tqdm bar on rank 0 (to stderr); a plain iterator elsewhere."""
    if not enabled:
        return iterable
    from tqdm import tqdm
    return tqdm(iterable, total=total, desc=desc, leave=False, file=sys.stderr, mininterval=1.0, dynamic_ncols=True)
