"""The registry: every method and baseline the comparison runs, in the order of its table. Adding one is a package
with a `Method` (utils/training/method.py) and one line here; compare_methods.py, the tests and the docs iterate
it. Above every method package: nothing it imports imports it.
"""
import importlib

from baselines.plain import BASE

ENTRIES = (  # one line per method or baseline, "module:OBJECT", in the comparison table's order
    "rr.method:RESREP",
    "csgd.method:CSGD",
    "aofp.method:AOFP",
    "sfp.method:SFP",
    "baselines.l1_pruning:L1",
    "baselines.from_scratch:SCRATCH",
    "baselines.plain:BASE_PLUS",
)
REGISTRY = {}


def register(method):
    """Add a method or baseline (a `Method`); its name must be new. Returns it."""
    if method.name in REGISTRY or method.name == BASE.name:
        raise ValueError(f"a method named {method.name!r} is registered already")
    REGISTRY[method.name] = method
    return method


def unregister(name):
    """Remove a registered method (a test's extra method)."""
    REGISTRY.pop(name)


def get_method(name):
    """The registered method or baseline called `name` (the base's plain training: "base")."""
    if name == BASE.name:
        return BASE
    if name not in REGISTRY:
        raise ValueError(f"unknown method {name!r}: choose from {', '.join(REGISTRY)}")
    return REGISTRY[name]


def list_methods(baselines=False):
    """The names of the registered methods (or, with `baselines`, of the baselines), in registration order."""
    return [name for name, m in REGISTRY.items() if m.baseline == baselines]


def load(entry):
    """The Method an ENTRIES line names."""
    module, name = entry.split(":")
    return getattr(importlib.import_module(module), name)


for _entry in ENTRIES:
    register(load(_entry))


def headlines():
    """[(method name, arch, Headline)]: every paper's headline setting, in the registry's table order."""
    return [(name, arch, h) for name in list_methods() for arch, h in REGISTRY[name].headlines.items()]
