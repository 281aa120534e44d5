"""Every flag of every entry script is checked: a value out of range is one `error:` line naming the flag and exit
code 2, before anything is read, trained or written; in the comparison, before a stage writes its record, with the
stage named."""
import math
import os

import pytest
from helpers import SMOKE_COMPARISON, SYNTHETIC, exit_code, script

import compare_methods
from baselines.plain import BASE
from utils.registry import REGISTRY
from utils.training import skeleton
from utils.training.cli import LIMITS

METHODS = {m.script: m for m in [BASE, *REGISTRY.values()]}  # base+ runs train_base_model.py too: one entry
# What each script needs besides the flag under test, so that the flag is what gets refused
NEEDS = {"csgd/do_csgd.py": ["--no-train-base"], "baselines/l1.py": ["--ratio", "0.5"],
         "baselines/scratch.py": ["--ratio", "0.5"]}
SCRIPTS = {name: (script(m).main, NEEDS.get(name, [])) for name, m in METHODS.items()}

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
        ("--flops-target", "0", "--flops-target 0.0: the fraction of the MACs to keep must be in (0, 1]"),
        ("--macs-target", "1.5", "--macs-target 1.5: the fraction of the MACs to keep must be in (0, 1]"),
        ("--lasso-strength", "-1", "--lasso-strength -1.0: must be a finite number, not negative"),
        ("--lasso-strength", "inf", "--lasso-strength inf: expected a finite number"),
        ("--mask-interval", "0", "--mask-interval 0: must be at least 1"),
        ("--before-mask-iters", "-1", "--before-mask-iters -1: must be at least 0"),
        ("--begin-granularity", "0", "--begin-granularity 0: must be at least 1"),
        ("--num-at-least", "0", "--num-at-least 0: must be at least 1"),
        ("--latency-target", "1.5", "--latency-target 1.5: the fraction of the base's latency to keep"),
    ],
    "csgd/do_csgd.py": [
        ("--eps", "-0.1", "--eps -0.1: must not be negative"),
        ("--vector-factor", "-1", "--vector-factor -1.0: must not be negative"),
        ("--ratios", "0.5,1.5", "every ratio must be in (0, 1]"),
        ("-i", "-1", "-i -1: the schedule has iterations 0..2"),
        ("--macs-target", "0", "--macs-target 0.0: the fraction of the MACs to keep must be in (0, 1]"),
        ("--cluster-seed", "-1", "--cluster-seed -1: must not be negative"),
    ],
    "aofp/do_aofp.py": [
        ("--flops-target", "0", "--flops-target 0.0: the fraction of the MACs to keep must be in (0, 1]"),
        ("--thresh", "inf", "--thresh inf: expected a finite number"),
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
        ("--macs-target", "0", "--macs-target 0.0: the fraction of the MACs to keep must be in (0, 1]"),
    ],
    "baselines/l1.py": [
        ("--ratio", "1/0", "--ratio 1/0: expected a fraction such as 0.5 or 1/2"),
        ("--ratio", "1.5", "--ratio 3/2: the kept fraction of each group must be in (0, 1]"),
    ],
    "baselines/scratch.py": [
        ("--ratio", "1/0", "--ratio 1/0: expected a fraction such as 0.5 or 1/2"),
        ("--ratio", "0", "--ratio 0: the kept fraction of each group must be in (0, 1]"),
    ],
    "train_base_model.py": [
        ("--milestones", "5", "--milestones 5: every milestone must be an epoch before the last (--epochs 1)"),
        ("--seed", "-3", "--seed -3: must not be negative"),
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
    epochs = ["--epochs", "1"] if flag == "--milestones" and script == "train_base_model.py" else []
    argv = ["-a", "src20", *extra, *SYNTHETIC, "-o", str(out), *epochs, *given]
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


def numeric_flags(method):
    """(flag, type) of every flag of the method's command line that takes a number (the launcher's --local-rank
    aside: torchrun sets it)."""
    for action in skeleton.parser(method)._actions:
        kind = getattr(action.type, "__name__", "")
        if action.option_strings and kind in ("int", "float", "finite") and action.dest != "local_rank":
            yield tuple(action.option_strings), kind


SWEEP = [(name, flags, value) for name, m in METHODS.items() for flags, kind in numeric_flags(m)
         for value in (("nan", "inf", "-inf") if kind != "int" else ("-5",))]


@pytest.mark.parametrize("script, flags, value", SWEEP, ids=[f"{s} {f[-1]} {v}" for s, f, v in SWEEP])
def test_every_numeric_flag_refuses_nonsense_before_anything(script, flags, value, tmp_path, capsys, monkeypatch):
    """Found by trying what a new user might: NaN, an infinity, a negative count. No number flag of any script lets
    one through to a run (an `inf` lasso strength once started a run that died with NaN)."""
    monkeypatch.chdir(tmp_path)
    main, extra = SCRIPTS[script]
    flag = flags[-1]  # the last spelling: an alias where there is one (--flops-target, --eps)
    if flag in ("--macs-target", "--flops-target"):
        extra = [x for x in extra if x not in ("--ratio", "0.5")]  # the target alone, not one of two knobs
    argv = ["-a", "src20", *extra, *SYNTHETIC, "-o", str(tmp_path / "run"),
            f"{flag}={value}"]
    assert exit_code(main, argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and len(err.strip().splitlines()) == 1, err
    assert any(f"{f} " in err for f in flags), err  # the line names the flag (in one of its spellings)
    assert os.listdir(tmp_path) == []


def test_both_knobs_of_a_size_target_are_refused(tmp_path, capsys):
    for name, knob in (("sfp/do_sfp.py", ["--rate", "0.5"]), ("baselines/l1.py", ["--ratio", "0.5"]),
                       ("csgd/do_csgd.py", ["--ratios", "0.5"])):
        main = script(METHODS[name]).main
        argv = ["-a", "src20", *knob, "--macs-target", "0.5", "--data", "synthetic", "-o", str(tmp_path / "x")]
        assert exit_code(main, argv) == 2, name
        assert "or --macs-target F (one of them)" in capsys.readouterr().err, name
    assert not os.path.exists(tmp_path / "x")


@pytest.mark.slow
def test_a_bad_stage_flag_names_the_stage_and_leaves_no_record(tmp_path, capsys):
    """--extra with a flag the stage's script refuses: the error names the stage and its command, and nothing of
    the stage is written, so the corrected command runs without 'made by another command'."""
    out = tmp_path / "cmp"
    argv = [*SMOKE_COMPARISON, "-o", str(out),
            "--methods", "sfp", "--baselines", ""]
    assert exit_code(compare_methods.main, [*argv, "--extra", "sfp=--epoch-prune 0"]) == 2
    err = capsys.readouterr().err.replace("\r", "\n").strip().splitlines()[-1]  # after the base's progress bar
    assert err.startswith("error: stage SFP at 50%, seed 0 (python sfp/do_sfp.py ")
    assert err.endswith("--epoch-prune 0): --epoch-prune 0: must be at least 1")
    assert not os.path.exists(out / "sfp")  # no stage_command.txt to block the re-run
    assert compare_methods.main([*argv, "--extra", "sfp=--epoch-prune 1"]) == 0
