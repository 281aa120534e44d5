"""compare_methods.py --jobs N: independent stages as processes, with results equal to the stages run one after
another in one process (same seeds, same threads, --deterministic); and how the process runner reports a stage
that fails or runs out of time."""
import glob
import os
import textwrap
from types import SimpleNamespace

import pytest
import torch
from helpers import SMOKE_COMPARISON

import compare_methods
from utils.command import NotFinished, RunError
from utils.training.stages import OUTPUT, Stage, run_processes
from utils.tools.store import read_hdf5


def script_stage(tmp_path, name, body):
    """A stage whose entry script is a few lines of Python (the runner only needs a script and its flags)."""
    path = tmp_path / f"{name}.py"
    path.write_text(textwrap.dedent(body))
    folder = tmp_path / name
    return Stage(SimpleNamespace(script=str(path)), str(folder), name, [], str(folder / "done"))


def test_stages_run_side_by_side_and_report_their_output(tmp_path):
    events = []
    body = """
        import os, sys, time
        time.sleep(1)
        print("threads", os.environ["OMP_NUM_THREADS"])
        open(os.path.join(os.path.dirname(__file__), "{}", "done"), "w").close()
    """
    stages = [script_stage(tmp_path, n, body.format(n)) for n in ("a", "b")]
    run_processes(stages, 2, 1, started=lambda s: events.append(("start", s.label)),
                  finished=lambda s, t: events.append(("end", s.label)))
    assert [e[0] for e in events] == ["start", "start", "end", "end"]  # both ran at once
    assert all(os.path.exists(s.done) for s in stages)
    assert (tmp_path / "a" / OUTPUT).read_text().strip() == "threads 1"


def test_a_failing_stage_names_itself_and_its_output(tmp_path):
    bad = script_stage(tmp_path, "bad", "import sys\nprint('something broke')\nsys.exit(1)\n")
    later = script_stage(tmp_path, "later", "print('ran')\n")
    with pytest.raises(RunError, match=r"stage bad failed \(exit code 1\)(.|\n)*something broke") as e:
        run_processes([bad, later], 1, 1, started=lambda s: None, finished=lambda s, t: None)
    assert OUTPUT in str(e.value)
    assert not os.path.exists(os.path.join(later.folder, OUTPUT))  # nothing new starts after a failure


def test_a_stage_stopped_by_its_time_limit_leaves_the_comparison_not_finished(tmp_path):
    stopped = script_stage(tmp_path, "stopped", "import sys\nsys.exit(3)\n")  # NOT_FINISHED
    with pytest.raises(NotFinished):
        run_processes([stopped], 2, 1, started=lambda s: None, finished=lambda s, t: None)


def weights(folder):
    """Every hdf5 file a comparison's stages wrote, by path under the folder: {path: state}."""
    files = sorted(glob.glob(os.path.join(folder, "**", "*.hdf5"), recursive=True))
    return {os.path.relpath(f, folder): read_hdf5(f)[0] for f in files}


@pytest.mark.slow
def test_jobs_give_the_stages_of_the_sequential_run(tmp_path):
    """The same stages run two at a time as processes give bitwise the files of the run one after another in this
    process: the runner changes where a stage runs, not what it computes (one thread each, as a thread count
    changes CPU results)."""
    argv = [*SMOKE_COMPARISON, "--methods", "resrep,sfp", "--baselines", "l1,base+", "--threads", "1",
            "--deterministic"]
    threads = torch.get_num_threads()
    assert compare_methods.main([*argv, "-o", str(tmp_path / "one")]) == 0
    assert torch.get_num_threads() == threads  # --threads holds for the stages only
    assert compare_methods.main([*argv, "--jobs", "2", "-o", str(tmp_path / "two")]) == 0
    one, two = weights(tmp_path / "one"), weights(tmp_path / "two")
    assert len(one) >= 8 and one.keys() == two.keys()
    for path in one:
        for name, tensor in one[path].items():
            assert torch.equal(torch.as_tensor(tensor), torch.as_tensor(two[path][name])), (path, name)
    assert os.path.exists(tmp_path / "two" / "sfp" / "macs0.5-seed0" / OUTPUT)  # a process's console output
    assert not os.path.exists(tmp_path / "one" / "sfp" / "macs0.5-seed0" / OUTPUT)


def test_jobs_and_threads_are_checked(capsys):
    from helpers import exit_code
    assert exit_code(compare_methods.main, ["--jobs", "0"]) == 2
    assert "--jobs 0: must be at least 1" in capsys.readouterr().err
    assert exit_code(compare_methods.main, ["--threads", "-1"]) == 2
    assert "--threads -1: must be at least 1" in capsys.readouterr().err


def test_a_stages_threads_do_not_depend_on_how_many_are_left(monkeypatch, tmp_path):
    """With --jobs 2, the last stage left (a resumed run) still runs as a process with the jobs' thread count, so it
    continues with the threads it started with; only the base, always alone, runs here."""
    calls = []
    monkeypatch.setattr(compare_methods.Stages, "ready", lambda self, stage: True)
    monkeypatch.setattr(compare_methods, "run_here", lambda stage, deadline, n: calls.append(("here", n)))
    monkeypatch.setattr(compare_methods, "run_processes",
                        lambda stages, jobs, n, deadline, started, finished: calls.append(("processes", n)))
    monkeypatch.setattr(compare_methods.Stages, "finished", lambda self, stage, seconds: None)
    monkeypatch.setattr(compare_methods.Stages, "started", lambda self, stage: None)
    stages = compare_methods.Stages(compare_methods.parse([*SMOKE_COMPARISON, "--jobs", "2", "--threads", "1",
                                                            "-o", str(tmp_path)]))
    one = script_stage(tmp_path, "one", "")
    stages.run([one])
    stages.run([one], alone=True)
    assert calls == [("processes", 1), ("here", 1)]
