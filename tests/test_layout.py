"""The layers the layout shows hold: the pruning core imports no training or tool code, the tools no
training code; every command runs as a file from anywhere and as a module, with no sys.path wall."""
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}


def imported_utils(*modules):
    """The utils.* modules that importing `modules` in a fresh interpreter pulls in."""
    code = (f"import sys\nfor m in {list(modules)!r}: __import__(m)\n"
            "print(' '.join(sorted(m for m in sys.modules if m.startswith('utils.'))))")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=ENV, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    return r.stdout.split()


def test_the_pruning_core_imports_no_training_or_tool_code():
    core = ["utils.pruning.channel_graph", "utils.pruning.surgery", "utils.pruning.flops", "utils.pruning.proof",
            "utils.pruning.convert", "utils.pruning.zeroing"]
    pulled = imported_utils(*core)
    assert set(core) <= set(pulled)
    assert not [m for m in pulled if m.startswith(("utils.training", "utils.tools"))], pulled


def test_the_tools_import_no_training_code():
    pulled = imported_utils("utils.tools.store", "utils.tools.latency", "utils.tools.export", "utils.tools.compare")
    assert not [m for m in pulled if m.startswith("utils.training")], pulled


COMMANDS = ["train_base_model.py", "rr/exp_resrep.py", "csgd/do_csgd.py", "aofp/do_aofp.py", "sfp/do_sfp.py",
            "baselines/l1.py", "baselines/scratch.py", "benchmarks/bench_precision.py", "benchmarks/aofp_damage.py",
            "benchmarks/gpu_check.py", "benchmarks/bench_speedup.py",
            "compare_methods.py", "display_hdf5.py", "transform_torchvision.py", "benchmarks/bench_latency.py",
            "benchmarks/bench_train.py", "benchmarks/bench_resrep.py", "benchmarks/bench_csgd.py"]


@pytest.mark.parametrize("script", COMMANDS)
def test_every_command_runs_as_a_file_from_anywhere_and_as_a_module(script, tmp_path):
    as_file = subprocess.run([sys.executable, os.path.join(ROOT, script), "-h"], cwd=tmp_path, env=ENV,
                             capture_output=True, text=True)
    assert as_file.returncode == 0 and as_file.stdout.startswith("usage:"), as_file.stderr
    module = script[:-len(".py")].replace("/", ".")
    as_module = subprocess.run([sys.executable, "-m", module, "-h"], cwd=ROOT, env=ENV, capture_output=True, text=True)
    assert as_module.returncode == 0 and as_module.stdout.startswith("usage:"), as_module.stderr


def test_no_sys_path_wall():
    """One guarded line puts the repository root on the path when a script runs as a file; nothing else."""
    walls = []
    for folder, _, files in os.walk(ROOT):
        if ".venv" in folder or ".git" in folder:
            continue
        for name in files:
            if name.endswith(".py"):
                text = open(os.path.join(folder, name)).read()
                if "noqa: " + "E402" in text:
                    walls.append(os.path.relpath(os.path.join(folder, name), ROOT))
    assert not walls, walls
