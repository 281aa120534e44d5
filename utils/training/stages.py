"""The comparison's stages: what one is, how many steps it trains, and running several: one after another in this
process, or up to `jobs` at once as processes of their entry scripts on one device.

On a GPU the engine is launch-bound (docs/BENCHMARKS.md: a src56 step uses under 1 % of an H200), so stages side
by side share the card almost for free; on a CPU the cores are split between them (`threads` each). A stage's
result depends only on its command and, on a CPU, on its thread count: under `--deterministic` the stages run as
processes equal the same stages run here with the same threads, bitwise (tests/test_jobs.py).
"""
import os
import shlex
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from utils.command import NOT_FINISHED, NotFinished, RunError
from utils.training import skeleton
from utils.training.data import TRAIN_IMAGES
from utils.training.engine import TIME_MARGIN_S

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
OUTPUT = "stage_output.txt"  # a stage run as a process writes its console output here, in its folder
# The one GPU measurement of a training step (benchmarks/gpu_check.py, NVIDIA H200, 2026-11-30): a src56 epoch of
# 390 steps at batch 128 took 7.07 s in bf16 + channels_last. The step is launch-bound (batch 1 and 256 take the
# same time), so it is counted the same at batch 64. ResRep's step costs 1.05x a plain one, C-SGD's 1.49x; the
# others' are taken as plain (not measured).
H200_STEP_S = {"src56": 7.07 / 390}
STEP_COST = {"resrep": 1.05, "csgd": 1.49}


@dataclass
class Stage:
    """One entry script run with its flags, in its own folder; `done` is the file that says it finished."""
    method: object  # utils.training.method.Method
    folder: str
    label: str
    argv: list
    done: str

    @property
    def command(self):
        return f"python {self.method.script} {shlex.join(self.argv)}"


def steps(stage, data, start=True):
    """The training steps the stage's flags ask for (every phase; a search that ends early trains fewer)."""
    args, cfg, _ = skeleton.check(stage.method, stage.argv, start=start)
    total = sum(epochs * max(1, TRAIN_IMAGES[data] // batch) for epochs, batch in stage.method.phases(args, cfg))
    return min(total, cfg.max_steps) if cfg.max_steps else total


def h200_minutes(stage, arch, n_steps):
    """The stage's training time on an H200 at the one measured step time (None where the arch was not measured)."""
    step = H200_STEP_S.get(arch)
    return None if step is None else n_steps * step * STEP_COST.get(stage.method.name, 1.0) / 60


@contextmanager
def threads(n):
    """torch's intra-op threads set to n (None: unchanged) for the block."""
    old = torch.get_num_threads()
    torch.set_num_threads(n or old)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def run_here(stage, deadline=None, n_threads=None):
    """Run the stage in this process (its run skeleton), with n_threads threads."""
    with threads(n_threads):
        skeleton.run(stage.method, stage.argv, deadline=deadline)


def run_processes(stages, jobs, n_threads, deadline=None, started=print, finished=print):
    """Run the stages as processes, at most `jobs` at once, each with n_threads threads and its console output in
    {folder}/stage_output.txt; `deadline` (time.monotonic()) becomes each one's --time-limit. Waits for all. A stage
    that fails stops new ones from starting (RunError, naming its output); one stopped by the limit: NotFinished."""
    env = {**os.environ, "OMP_NUM_THREADS": str(n_threads), "MKL_NUM_THREADS": str(n_threads), "PYTHONUNBUFFERED": "1"}
    queue, running, failed, unfinished = list(stages), {}, [], []
    try:
        while running or (queue and not failed):
            while queue and len(running) < jobs and not failed:
                stage = queue.pop(0)
                limit = []
                if deadline is not None:
                    left = deadline - time.monotonic()
                    if left < 2 * TIME_MARGIN_S:
                        unfinished.append(stage)
                        continue
                    limit = ["--time-limit", f"{left / 60:.2f}"]  # not part of the stage's recorded command
                os.makedirs(stage.folder, exist_ok=True)
                log = open(os.path.join(stage.folder, OUTPUT), "ab")
                command = [sys.executable, os.path.join(ROOT, stage.method.script), *stage.argv, *limit]
                running[subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)] = (stage, log,
                                                                                                 time.time())
                started(stage)
            time.sleep(0.2)
            for proc in [p for p in running if p.poll() is not None]:
                stage, log, t = running.pop(proc)
                log.close()
                if proc.returncode == 0:
                    finished(stage, time.time() - t)
                elif proc.returncode == NOT_FINISHED:
                    unfinished.append(stage)
                else:
                    failed.append((stage, proc.returncode))
    finally:
        for proc, (_, log, _) in running.items():  # Ctrl-C or an error here: the children stop with us
            proc.terminate()
            proc.wait()
            log.close()
    if failed:
        stage, code = failed[0]
        path = os.path.join(stage.folder, OUTPUT)
        tail = "".join(open(path, errors="replace").readlines()[-5:]).rstrip()
        raise RunError(f"stage {stage.label} failed (exit code {code}): {stage.command}\n{tail}\n(all of it: {path}; "
                       "re-running the comparison resumes the stages that were not finished)")
    if unfinished:
        raise NotFinished(f"{len(unfinished)} stage(s) stopped or not started before the time limit")
