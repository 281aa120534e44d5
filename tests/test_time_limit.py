"""Runs that span slots: --time-limit stops a run at a checkpoint before the limit with one line and exit code 3,
the same command continues it, and the pieces equal one uninterrupted run bit for bit (CPU, --deterministic),
wherever the run folder was moved in between; the comparison stops and continues the same way."""
import json
import shutil

import pytest
import torch

import compare_methods
from baselines.plain import BASE
from helpers import SMOKE_COMPARISON, SYNTHETIC, exit_code, script
from sfp.method import SFP
from utils.command import NOT_FINISHED
from utils.tools.store import read_hdf5

train_base_model, do_sfp = script(BASE), script(SFP)
SMOKE = ["-a", "src20", *SYNTHETIC, "--epochs", "3", "--batch-size", "32", "--lr", "0.05", "--milestones", "2",
         "--deterministic", "--ckpt-every", "7"]  # checks at checkpoints (7, 14, ...), log points (20, 40), epoch ends
TINY = ["--time-limit", "0.001"]  # 0.06 s: less than the run keeps in hand, so it stops at its first check


def pieces(main, argv, capsys, most=20):
    """Run `argv` with a tiny time limit until it finishes; the steps each piece stopped at."""
    stops = []
    for _ in range(most):
        code = exit_code(main, [*argv, *TINY])
        err = capsys.readouterr().err
        if code == 0:
            return stops
        assert code == NOT_FINISHED and "not finished: run the same command again to continue" in err, err
        assert len(err.replace("\r", "\n").strip().splitlines()[-1:]) == 1
        stops.append(int(err.split("stopped at step ")[-1].split()[0]))
    raise AssertionError(f"not finished after {most} pieces: {stops}")


def assert_same_files(a, b):
    sa, da, _ = read_hdf5(a)
    sb, db, _ = read_hdf5(b)
    assert da == db and sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


@pytest.mark.slow
def test_a_run_in_pieces_equals_one_run_wherever_its_folder_goes(tmp_path, capsys):
    train_base_model.main([*SMOKE, "-o", str(tmp_path / "whole")])
    first = tmp_path / "first"
    assert exit_code(train_base_model.main, [*SMOKE, "-o", str(first), *TINY]) == NOT_FINISHED
    assert "time limit: stopped at step 7 of 48" in (first / "log.txt").read_text()  # its first check
    capsys.readouterr()
    moved = tmp_path / "elsewhere" / "run"
    shutil.move(first, moved)  # another machine: the folder holds no path of the first one that matters
    stops = pieces(train_base_model.main, [*SMOKE, "-o", str(moved)], capsys)
    assert stops == sorted(stops) and 48 in stops  # then the end of training itself, before the final evaluation
    assert {14, 16, 20, 32} <= set(stops)  # a checkpoint, an epoch's end (after its hooks), a log point
    assert_same_files(tmp_path / "whole" / "finish.hdf5", moved / "finish.hdf5")


@pytest.mark.slow
def test_a_method_stopped_at_its_time_limit_converts_as_one_run_would(base_file, tmp_path, capsys):
    argv = ["-a", "src20", "--init", base_file, *SYNTHETIC, "--epochs", "2", "--batch-size", "32", "--max-steps", "20",
            "--deterministic", "--groups", "internal", "--rate", "0.6"]
    do_sfp.main([*argv, "-o", str(tmp_path / "whole")])
    capsys.readouterr()
    assert pieces(do_sfp.main, [*argv, "-o", str(tmp_path / "cut")], capsys)
    for name in ("finish.hdf5", "finish_converted.hdf5"):
        assert_same_files(tmp_path / "whole" / name, tmp_path / "cut" / name)


def test_the_limit_is_checked_like_every_number(capsys, tmp_path):
    assert exit_code(train_base_model.main, [*SMOKE, "-o", str(tmp_path / "x"), "--time-limit", "0"]) == 2
    assert "--time-limit 0.0: must be a positive number of minutes" in capsys.readouterr().err
    assert exit_code(compare_methods.main, ["--time-limit", "-1"]) == 2
    assert "--time-limit -1.0: must be a positive number of minutes" in capsys.readouterr().err


@pytest.mark.slow
def test_the_comparison_stops_and_continues(tmp_path, capsys):
    out = tmp_path / "cmp"
    argv = [*SMOKE_COMPARISON, "-o", str(out), "--methods", "sfp", "--baselines", ""]
    assert exit_code(compare_methods.main, [*argv, *TINY]) == NOT_FINISHED
    assert "not finished: run the same command again to continue" in capsys.readouterr().err
    assert not (out / "comparison.json").exists()
    assert compare_methods.main(argv) == 0  # the same command, no limit: continues, stage commands unchanged
    rows = {r["name"]: r for r in json.load(open(out / "comparison.json"))["rows"]}
    assert list(rows) == ["base", "sfp"] and rows["sfp"]["exact"] is True
