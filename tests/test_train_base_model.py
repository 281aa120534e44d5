"""train_base_model.py end to end: kill-and-resume equals uninterrupted, real CIFAR-10 learns, bad input."""
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from helpers import SYNTHETIC, script

from baselines.plain import BASE
from utils.command import run_main
from utils.tools.store import read_hdf5

train_base_model = script(BASE)

REAL_CIFAR = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "cifar10-jpeg.tar.gz")
SMOKE = ["-a", "src20", *SYNTHETIC, "--epochs", "3", "--batch-size", "32", "--lr", "0.05", "--milestones", "2",
         "--deterministic", "--ckpt-every", "5"]


def run(args, **kw):
    return subprocess.Popen([sys.executable, "train_base_model.py", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kw)


@pytest.mark.slow
def test_killed_run_resumes_to_the_same_weights(tmp_path, precision):
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    p = run([*SMOKE, "-o", str(whole)])
    q = run([*SMOKE, "-o", str(killed)])
    ckpt = killed / "checkpoint.pth"
    while not ckpt.exists() and q.poll() is None:
        time.sleep(0.02)
    q.send_signal(signal.SIGKILL)  # no chance to clean up, as on a crash
    q.wait()
    assert p.wait() == 0, p.stderr.read()
    stopped_at = torch.load(ckpt, weights_only=False)["step"]
    assert 0 < stopped_at < 48
    r = run([*SMOKE, "-o", str(killed)])
    out, err = r.communicate()
    assert r.returncode == 0, err
    assert f"resumed from {ckpt} at step {stopped_at} of 48" in out
    a, deps_a, _ = read_hdf5(whole / "finish.hdf5")
    b, deps_b, _ = read_hdf5(killed / "finish.hdf5")
    assert deps_a == deps_b and a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k  # bitwise, in deterministic mode on CPU


@pytest.mark.skipif(not os.path.exists(REAL_CIFAR), reason="../shared/data/cifar10-jpeg.tar.gz is absent")
@pytest.mark.slow
def test_src20_learns_on_real_cifar10(tmp_path, capsys):
    # 150 steps of 128 images (under half an epoch) reach 32.9 % top-1 on the 10,000 test images with
    # this seed (docs/RESULTS.md); 25 % is far above chance (10 %) yet leaves room for thread-order noise.
    argv = ["-a", "src20", "--data", "cifar10", "--data-root", REAL_CIFAR, "--batch-size", "128", "--lr", "0.1",
            "--max-steps", "150", "--device", "cpu", "-o", str(tmp_path)]
    with pytest.raises(SystemExit) as e:
        run_main(lambda: train_base_model.main(argv))
    assert e.value.code == 0
    out = capsys.readouterr().out
    line = next(l for l in out.splitlines() if l.startswith("src20 on cifar10: top1"))
    top1 = float(line.split()[4])
    assert "(10000 test images)" in line and top1 > 25, line


@pytest.mark.parametrize("argv, needle", [
    (["-a", "src57"], "unknown arch 'src57'; choose one of: src20"),
    (["-a", "src20", "--data", "cifar10", "--data-root", "/nonexistent/cifar"], "ln -s"),
    (["-a", "src20", "--deps", "16,16,15"], "src20: deps"),
    (["-a", "src20", "--data", "mnist"], "mnist"),
    (["-a", "src20", "--data", "synthetic", "--init", "/nonexistent.hdf5"], "/nonexistent.hdf5: no such file"),
    (["-a", "src20", "--data", "synthetic", "--device", "cuda:0"] if not torch.cuda.is_available()
     else ["-a", "src20", "--batch-size", "0"], "--"),
])
def test_bad_input_gives_one_error_line(argv, needle, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        run_main(lambda: train_base_model.main([*argv, "-o", str(tmp_path)]))
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.startswith("error:") and needle in err, err
    assert len(err.strip().splitlines()) == 1


def test_a_trained_file_says_what_made_it(tmp_path):
    """Provenance a reader of a shipped base needs: command, commit, machine, and what its top-1 stands on."""
    train_base_model.main([*SMOKE, "--max-steps", "2", "-o", str(tmp_path)])
    _, _, attrs = read_hdf5(tmp_path / "finish.hdf5")
    p, t, m = attrs["provenance"], attrs["training"], attrs["metrics"]
    assert p["command"] and p["torch"] == torch.__version__ and "cores" in p["hardware"]
    assert p["commit"] is None or len(p["commit"].split("+")[0]) == 12
    assert (t["data"], t["seed"], t["epochs"], t["steps"], t["batch_size"]) == ("synthetic", 0, 3, 2, 32)
    assert t["precision"] in ("fp32", "bf16 autocast") and t["init"] is None and m["samples"] == 128
