"""The hdf5 weight store, in the original repos' layout: one dataset per state-dict key with `/`
written as `+`, an int64 `deps` dataset when the widths are known, and attributes (arch, provenance).

Files are written to a temporary name beside the target and renamed, so a crash never leaves a
half-written file under the final name. Loading checks every name and shape.
"""
import json
import os
import platform
import subprocess
import sys
import time

import h5py
import numpy as np
import torch

import utils.pruning  # noqa: F401  (registers the tv: archs a file may name)
from utils.atomic import atomic_write

DEPS_KEY = "deps"
# Older files, and our converted ones, may lack BN's step counter; it never affects outputs.
OPTIONAL_SUFFIXES = ("num_batches_tracked",)


class WeightFileError(ValueError):
    """A weight file that is missing, not hdf5, truncated, or does not fit the model."""


def strip_prefix(state):
    """Drop DDP's `module.` (and torch.compile's `_orig_mod.`) prefix from every key."""
    out = {}
    for k, v in state.items():
        for prefix in ("module.", "_orig_mod."):
            if k.startswith(prefix):
                k = k[len(prefix):]
        out[k] = v
    return out


def commit():
    """The repository's commit (with '+changes' when the work tree differs from it), or None outside git."""
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    try:
        head = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=root, capture_output=True, text=True,
                              timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return head.stdout.strip() + ("+changes" if dirty.stdout.strip() else "") if head.returncode == 0 else None


def hardware():
    """The machine in words: CPU model, cores, native bf16, and the GPU when there is one."""
    cpu, flags = platform.processor() or platform.machine(), ""
    if os.path.exists("/proc/cpuinfo"):
        info = open("/proc/cpuinfo").read()
        names = [line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")]
        cpu, flags = (names[0] if names else cpu), info
    bf16 = sorted({f for f in ("avx512_bf16", "amx_bf16") if f" {f}" in flags})
    text = f"{cpu}, {os.cpu_count()} cores" + (f", {'/'.join(bf16)}" if bf16 else ", no native bf16")
    if torch.cuda.is_available():
        text += f"; {torch.cuda.get_device_name()}"
    return text


def provenance():
    """What made a file: the command line, the commit, the machine, the time and the library versions."""
    return {"command": " ".join([os.path.basename(sys.argv[0]), *sys.argv[1:]]), "commit": commit(),
            "hardware": hardware(), "torch": torch.__version__, "saved_at": time.strftime("%Y-%m-%dT%H:%M:%S")}


def save_hdf5(path, state, deps=None, arch=None, **attrs):
    """Write a state dict (tensors or arrays) to `path` atomically; extra attrs are stored as JSON."""
    state = strip_prefix(state)
    attrs = {"provenance": provenance(), **attrs}

    def write(tmp):
        with h5py.File(tmp, "w") as f:
            for name, value in state.items():
                if isinstance(value, torch.Tensor):
                    value = value.detach().cpu().numpy()
                f.create_dataset(name.replace("/", "+"), data=np.asarray(value))
            if deps is not None:
                f.create_dataset(DEPS_KEY, data=np.asarray(deps, dtype=np.int64))
            if arch is not None:
                f.attrs["arch"] = arch
            for k, v in attrs.items():
                f.attrs[k] = json.dumps(v)

    atomic_write(path, write)


def read_hdf5(path):
    """Return (state dict of tensors, deps list or None, attrs dict)."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise WeightFileError(f"{path}: no such file")
    if not h5py.is_hdf5(path):
        raise WeightFileError(f"{path}: not an hdf5 file (or truncated before its header)")
    try:
        with h5py.File(path, "r") as f:
            state, deps = {}, None
            for name, ds in f.items():
                if not isinstance(ds, h5py.Dataset):
                    raise WeightFileError(f"{path}: '{name}' is a group; expected one dataset per weight")
                value = ds[()]
                if name == DEPS_KEY:
                    deps = [int(d) for d in np.asarray(value).reshape(-1)]
                else:
                    state[name.replace("+", "/")] = torch.from_numpy(np.array(value))
            attrs = {k: _decode(v) for k, v in f.attrs.items()}
    except WeightFileError:
        raise
    except (OSError, KeyError, ValueError, RuntimeError) as e:
        raise WeightFileError(f"{path}: cannot read it as a weight file ({type(e).__name__}: {e}); "
                              "it may be truncated or corrupt") from None
    return state, deps, attrs


def read_attrs(path):
    """A weight file's attributes alone (arch, metrics, conversion, ...), without reading its weights."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise WeightFileError(f"{path}: no such file")
    try:
        with h5py.File(path, "r") as f:
            return {k: _decode(v) for k, v in f.attrs.items()}
    except OSError as e:
        raise WeightFileError(f"{path}: cannot read it as a weight file ({e})") from None


def _decode(v):
    if isinstance(v, bytes):
        v = v.decode()
    if isinstance(v, str):
        try:
            return json.loads(v)
        except ValueError:
            return v
    return v


def check_state(model_state, file_state, allow_missing=()):
    """Compare names and shapes; return a message listing every problem, or '' when they fit."""
    def listed(names):
        names = sorted(names)
        return ", ".join(names[:8]) + (f", ... ({len(names)} in all)" if len(names) > 8 else "")

    missing = [k for k in model_state if k not in file_state
               and not k.endswith(OPTIONAL_SUFFIXES) and not any(a in k for a in allow_missing)]
    unexpected = [k for k in file_state if k not in model_state]
    mismatched = [f"{k} (file {tuple(file_state[k].shape)}, model {tuple(model_state[k].shape)})"
                  for k in file_state if k in model_state and file_state[k].shape != model_state[k].shape]
    problems = []
    if missing:
        problems.append(f"missing from the file: {listed(missing)}")
    if unexpected:
        problems.append(f"unexpected in the file: {listed(unexpected)}")
    if mismatched:
        problems.append(f"shape mismatch: {listed(mismatched)}")
    return "; ".join(problems)


def load_state(model, state, allow_missing=(), source="weights"):
    """Copy `state` into `model` after checking every name and shape; one message for all problems."""
    state = strip_prefix(state)
    own = model.state_dict()
    problems = check_state(own, state, allow_missing)
    if problems:
        hint = ""
        if any(k.endswith(".conv.bias") for k in state) and not any(".bn." in k for k in state):
            hint = " (this looks like a BN-fused deploy file: build the model and call utils.pruning.surgery.fuse_bn first)"
        raise WeightFileError(f"{source} do not fit the model: {problems}{hint}")
    with torch.no_grad():
        for k, v in state.items():
            own[k].copy_(v.to(own[k].dtype))
    return model


def load_hdf5(model, path, allow_missing=()):
    """Load an hdf5 file into a model (strict names and shapes); return the file's deps (or None)."""
    state, deps, _ = read_hdf5(path)
    load_state(model, state, allow_missing, source=os.fspath(path))
    return deps


def infer_arch(state, deps=None):
    """The registered arch whose conv names (and deps length) match a state dict, or None."""
    from base_model import ARCHS

    for name, spec in ARCHS.items():
        convs = spec.deps_names()
        if (deps is None or len(deps) == len(convs)) and all(f"{c}.conv.weight" in state for c in convs) \
                and len([k for k in state if k.endswith(".conv.weight")]) == len(convs):
            return name
    return None


def is_deploy_form(state):
    """BN folded into conv biases, as the original repos' converted files are."""
    return any(k.endswith(".conv.bias") for k in state) and not any(k.endswith(".bn.weight") for k in state)


def head_classes(state):
    """The number of classes of a state dict's classifier (its linear layer's rows), or None."""
    head = [k for k in state if k.endswith(("linear.weight", "fc.weight", "linear2.weight"))]
    return int(state[head[0]].shape[0]) if head else None


def file_deps(state, arch):
    """The conv widths a state dict holds, read from its conv weights (for files written without deps)."""
    from utils.pruning.channel_graph import arch_graph

    names = [f"{conv}.weight" for conv in arch_graph(arch).convs]
    return [int(state[n].shape[0]) for n in names] if all(n in state for n in names) else None


def model_from_hdf5(path, arch=None, num_classes=None, trainable=False):
    """Build the model a weight file describes (arch from the argument, the file or its names; widths
    from its deps, else its conv weights) and load it. Returns (model, arch, deps). A deploy-form file
    gives a BN-fused model, or with `trainable` an error (training needs conv+BN)."""
    from base_model import build_model, default_deps
    from utils.pruning.channel_graph import arch_graph
    from utils.pruning.surgery import fuse_bn

    state, deps, attrs = read_hdf5(path)
    state = strip_prefix(state)
    arch = arch or attrs.get("arch") or infer_arch(state, deps)
    if arch is None:
        raise WeightFileError(f"{path}: cannot tell which arch it holds; pass it with -a/--arch")
    deploy = is_deploy_form(state)
    if deploy and trainable:
        raise WeightFileError(f"{path} has its BN folded into the convs (a deploy-form file); training starts "
                              "from a conv+BN weight file such as a finish.hdf5 or finish_converted.hdf5")
    deps = deps or file_deps(state, arch) or default_deps(arch)
    num_classes = num_classes or head_classes(state)
    model = build_model(arch, deps, num_classes)
    if deploy:
        fuse_bn(model, arch_graph(arch, num_classes))
    load_state(model, state, source=os.fspath(path))
    return model.eval(), arch, deps
