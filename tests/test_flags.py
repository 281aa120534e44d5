"""Every numeric flag of every entry script is checked: a value out of range is one `error:` line naming the
flag and exit code 2, before anything is read, trained or written."""
import math
import os

import pytest

import compare_methods
import train_base_model
from aofp import do_aofp
from csgd import do_csgd
from helpers import exit_code
from rr import exp_resrep
from sfp import do_sfp
from utils.training.cli import LIMITS

SCRIPTS = {
    "train_base_model.py": (train_base_model.main, []),
    "rr/exp_resrep.py": (exp_resrep.main, []),
    "csgd/do_csgd.py": (do_csgd.main, ["-i", "0", "--no-train-base"]),
    "aofp/do_aofp.py": (do_aofp.main, []),
    "sfp/do_sfp.py": (do_sfp.main, []),
}
SHARED = [  # (flag, value, what the one line says)
    ("--epochs", "-1", "--epochs -1: must be at least 1"),
    ("--epochs", "0", "--epochs 0: must be at least 1"),
    ("--batch-size", "0", "--batch-size 0: must be at least 1"),
    ("--lr", "0", "--lr 0.0: must be a positive number"),
    ("--lr", "nan", "--lr nan: must be a positive number"),
    ("--momentum", "1", "--momentum 1.0: must be in [0, 1)"),
    ("--weight-decay", "-1e-4", "--weight-decay -0.0001: must not be negative"),
    ("--gamma", "0", "--gamma 0.0: must be a positive number"),
    ("--milestones", "0,5", "--milestones 0,5: every milestone must be an epoch of at least 1"),
    ("--warmup-epochs", "-1", "--warmup-epochs -1.0: must not be negative"),
    ("--label-smoothing", "1", "--label-smoothing 1.0: must be in [0, 1)"),
    ("--eval-every", "0", "--eval-every 0: must be at least 1"),
    ("--ckpt-every", "0", "--ckpt-every 0: must be at least 1"),
    ("--log-every", "0", "--log-every 0: must be at least 1"),
    ("--max-steps", "0", "--max-steps 0: must be at least 1"),
    ("--workers", "-1", "--workers -1: must not be negative"),
]
OWN = {  # each method's own numeric flags
    "rr/exp_resrep.py": [
        ("--flops-target", "0", "--flops-target is the fraction of MACs to keep"),
        ("--flops-target", "1.5", "--flops-target is the fraction of MACs to keep"),
        ("--lasso-strength", "-1", "--lasso-strength must not be negative"),
        ("--mask-interval", "0", "--mask-interval must be at least 1"),
        ("--before-mask-iters", "-1", "--before-mask-iters must be at least 0"),
        ("--begin-granularity", "0", "--begin-granularity must be at least 1"),
        ("--num-at-least", "0", "--num-at-least must be at least 1"),
    ],
    "csgd/do_csgd.py": [
        ("--eps", "-0.1", "--eps -0.1: must not be negative"),
        ("--vector-factor", "-1", "--vector-factor -1.0: must not be negative"),
        ("--ratios", "0.5,1.5", "every ratio must be in (0, 1]"),
        ("-i", "-1", "-i -1: the schedule has iterations 0..2"),
    ],
    "aofp/do_aofp.py": [
        ("--flops-target", "0", "--flops-target 0.0: the fraction of MACs to keep must be in (0, 1]"),
        ("--iters-per-half", "0", "--iters-per-half 0: must be at least 1"),
        ("--thresh", "0", "--thresh 0.0: must be positive"),
        ("--warmup-iters", "-1", "--warmup-iters -1: must not be negative"),
        ("--ft-epochs", "0", "--ft-epochs 0: must be at least 1"),
        ("--ft-lr", "-1", "--ft-lr -1.0: must be a positive number"),
        ("--ft-batch-size", "0", "--ft-batch-size 0: must be at least 1"),
        ("--ft-weight-decay", "-1", "--ft-weight-decay -1.0: must not be negative"),
        ("--ft-eval-every", "0", "--ft-eval-every 0: must be at least 1"),
        ("--ft-max-steps", "0", "--ft-max-steps 0: must be at least 1"),
    ],
    "sfp/do_sfp.py": [
        ("--rate", "0", "--rate 0.0: it is the keep ratio"),
        ("--rate", "1.5", "--rate 1.5: it is the keep ratio"),
        ("--epoch-prune", "0", "--epoch-prune 0: must be at least 1"),
        ("--bn-weight-decay", "-1", "--bn-weight-decay -1.0: must not be negative"),
        ("--bias-lr-factor", "-1", "--bias-lr-factor -1.0: must not be negative"),
        ("--warmup-factor", "2", "--warmup-factor 2.0: must be in [0, 1]"),
    ],
}
CASES = [(script, *case) for script in SCRIPTS for case in SHARED + OWN.get(script, [])]


@pytest.mark.parametrize("script, flag, value, needle", CASES, ids=[f"{c[0]} {c[1]} {c[2]}" for c in CASES])
def test_a_flag_out_of_range_is_one_line_and_exit_2_before_anything(script, flag, value, needle, tmp_path, capsys,
                                                                     monkeypatch):
    monkeypatch.chdir(tmp_path)  # no base model here: the flag must be refused before the weights are looked for
    main, extra = SCRIPTS[script]
    out = tmp_path / "run"
    given = [f"{flag}={value}"] if flag.startswith("--") else [flag, value]  # --x=-1e-4: not taken for a flag
    argv = ["-a", "src20", *extra, "--data", "synthetic", "--device", "cpu", "-o", str(out), *given]
    assert exit_code(main, argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and needle in err and len(err.strip().splitlines()) == 1, err
    assert os.listdir(tmp_path) == []  # nothing written: no output folder, no base model trained


def test_the_limits_refuse_nan_everywhere():
    """Every range is written so that NaN fails it (a `v < 0` test would let NaN through)."""
    for name, (ok, _) in LIMITS.items():
        if name != "milestones":
            assert not ok(math.nan), name


def test_the_comparison_checks_its_own_numbers(capsys):
    assert exit_code(compare_methods.main, ["--latency-repeats", "0"]) == 2
    assert "--latency-repeats 0: must be at least 1" in capsys.readouterr().err
    assert exit_code(compare_methods.main, ["--macs-target", "nan"]) == 2
    assert "--macs-target nan" in capsys.readouterr().err
