"""The layers the layout shows hold, read from the source (every import statement, those inside functions too):

    base_model, utils.atomic, utils.command     import nothing above them
    utils.pruning (the pruning core)            imports no training, tools, registry or method code
    utils.tools                                 imports no training, registry or method code
    utils.training                              imports no registry or method code
    rr, csgd, aofp, sfp, baselines (methods)    import no registry and no other method package (the baselines'
                                                plain training excepted: C-SGD trains a missing base with it)
    utils.registry                              above every method package
    entry scripts (commands)                    imported by no module but the tests; thin: a Method and `run`

and there is no import cycle among the library modules. Every command runs as a file from anywhere and as a
module, with no sys.path wall. Run alone: `python -m pytest tests/test_layout.py`.
"""
import ast
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
METHOD_PACKAGES = ("rr", "csgd", "aofp", "sfp", "baselines")
# The commands: every file a user runs (`python X.py`). The method ones are thin: a Method and the skeleton.
METHOD_SCRIPTS = ["train_base_model.py", "rr/exp_resrep.py", "csgd/do_csgd.py", "aofp/do_aofp.py", "sfp/do_sfp.py",
                  "baselines/l1.py", "baselines/scratch.py"]
COMMANDS = METHOD_SCRIPTS + [
    "compare_methods.py", "display_hdf5.py", "transform_torchvision.py", "benchmarks/bench_precision.py",
    "benchmarks/aofp_damage.py", "benchmarks/gpu_check.py", "benchmarks/bench_speedup.py",
    "benchmarks/bench_latency.py",
    "benchmarks/bench_train.py", "benchmarks/bench_resrep.py", "benchmarks/bench_csgd.py",
    "benchmarks/bench_torchvision.py"]


def module_name(path):
    rel = os.path.relpath(path, ROOT)[:-len(".py")].replace(os.sep, ".")
    return rel[:-len(".__init__")] if rel.endswith(".__init__") else rel


def python_files(*folders):
    for folder in folders:
        top = os.path.join(ROOT, folder)
        if top.endswith(".py"):
            yield top
            continue
        for d, _, files in os.walk(top):
            yield from (os.path.join(d, f) for f in sorted(files) if f.endswith(".py"))


def imports(path):
    """Every module an import statement of `path` names (relative imports resolved; `from a import b` gives both
    a and a.b, since b may be a module)."""
    name = module_name(path)
    package = name if path.endswith("__init__.py") else name.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(open(path).read(), path)):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                parent = ".".join(parts[:len(parts) - node.level + 1])
                base = f"{parent}.{base}" if base else parent
            if node.module or not node.level:  # `from . import x` names its siblings, not the package itself
                out.add(base)
            out.update(f"{base}.{a.name}" for a in node.names)
    return out


LIBRARY = [p for p in python_files("base_model", "utils", *METHOD_PACKAGES)
           if os.path.relpath(p, ROOT) not in METHOD_SCRIPTS]
SCRIPT_MODULES = {module_name(os.path.join(ROOT, s)) for s in COMMANDS}


def under(module, *prefixes):
    return any(module == p or module.startswith(p + ".") for p in prefixes)


RULES = [  # (the modules a rule is about, what they must not import)
    (("base_model", "utils.atomic", "utils.command"), ("utils.pruning", "utils.tools", "utils.training",
                                                       "utils.registry", *METHOD_PACKAGES)),
    (("utils.pruning",), ("utils.training", "utils.tools", "utils.registry", *METHOD_PACKAGES)),
    (("utils.tools",), ("utils.training", "utils.registry", *METHOD_PACKAGES)),
    (("utils.training",), ("utils.registry", *METHOD_PACKAGES)),
    (("rr", "csgd", "aofp", "sfp", "baselines"), ("utils.registry",)),
]


@pytest.mark.parametrize("path", LIBRARY, ids=lambda p: os.path.relpath(p, ROOT))
def test_every_library_module_keeps_to_its_layer(path):
    name = module_name(path)
    found = imports(path)
    bad = sorted(m for m in found for mods, banned in RULES if under(name, *mods) and under(m, *banned))
    own = name.split(".")[0]
    if own in METHOD_PACKAGES:  # one method never reaches into another (plain training is shared)
        bad += sorted(m for m in found if under(m, *METHOD_PACKAGES) and not under(m, own, "baselines.plain"))
    bad += sorted(m for m in found if m in SCRIPT_MODULES)  # an entry script is never imported
    assert not bad, f"{os.path.relpath(path, ROOT)} imports {bad}"


def test_no_command_imports_another():
    for script in COMMANDS:
        path = os.path.join(ROOT, script)
        bad = sorted(imports(path) & (SCRIPT_MODULES - {module_name(path)}))
        assert not bad, f"{script} imports {bad}"


def test_the_checks_see_imports_inside_functions(tmp_path):
    """The teeth of the rules above: an import hidden in a function body, or relative, is found."""
    pkg = tmp_path / "utils" / "pruning"
    pkg.mkdir(parents=True)
    (pkg / "x.py").write_text("def f():\n    from ..training import engine\n    import rr.method\n")
    global ROOT
    root, ROOT = ROOT, str(tmp_path)
    try:
        assert {"utils.training", "utils.training.engine", "rr.method"} <= imports(str(pkg / "x.py"))
    finally:
        ROOT = root


def test_no_import_cycle_among_library_modules():
    graph = {module_name(p): {m for m in imports(p)} for p in LIBRARY}
    graph = {k: {m for m in v if m in graph and m != k} for k, v in graph.items()}
    state = {}

    def visit(node, path):
        state[node] = "open"
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                cycle = path[path.index(nxt):] + [nxt]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])


@pytest.mark.parametrize("script", METHOD_SCRIPTS)
def test_method_entry_scripts_are_thin(script):
    """Under 60 lines, no recipe of their own: the method is its registered Method object."""
    text = open(os.path.join(ROOT, script)).read()
    assert len(text.splitlines()) < 60, script
    tree = ast.parse(text)
    assigned = {t.id for node in tree.body if isinstance(node, ast.Assign) for t in node.targets
                if isinstance(t, ast.Name)}
    assert not assigned & {"RECIPES", "SEARCH", "FINETUNE"}, script
    assert "skeleton" in text and "run(" in text, script


def test_the_pruning_core_imports_no_training_or_tool_code_when_run():
    """The same, as Python sees it: importing the core in a fresh interpreter pulls in no training or tools."""
    core = ["utils.pruning.channel_graph", "utils.pruning.surgery", "utils.pruning.flops", "utils.pruning.proof",
            "utils.pruning.convert", "utils.pruning.zeroing", "utils.pruning.plan"]
    code = (f"import sys\nfor m in {core!r}: __import__(m)\n"
            "print(' '.join(sorted(m for m in sys.modules if m.startswith('utils.'))))")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=ENV, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    pulled = r.stdout.split()
    assert set(core) <= set(pulled)
    assert not [m for m in pulled if m.startswith(("utils.training", "utils.tools"))], pulled


@pytest.mark.parametrize("script", COMMANDS)
@pytest.mark.slow
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
