"""The comparison's measuring: every network of a run read back from its file, evaluated on the whole test set (or
its recorded accuracy taken), counted (MACs, params) and timed in its deploy form, all in turns; with `onnx`, also
exported and checked in ONNX Runtime. compare_methods.py calls `measure_all` once its stages are done."""
import os

import torch

from base_model import default_deps, get_arch
from utils.pruning.channel_graph import arch_graph
from utils.pruning.flops import count
from utils.tools.compare import EXACT_TOL
from utils.tools.export import check_onnx, export_onnx
from utils.tools.latency import ORT, measure
from utils.tools.store import model_from_hdf5, read_attrs

from .data import make_loaders
from .engine import evaluate


def top1_of(path, arch, val, device):
    """The accuracy a file records (its stage evaluated that very network on the whole test set before
    writing it); a file from elsewhere without one (an imported base) is evaluated here."""
    metrics = read_attrs(path).get("metrics")
    if metrics and metrics.get("samples") == val.dataset_size:
        return metrics["top1"]
    return evaluate(model_from_hdf5(path, arch)[0].to(device), val, device)["top1"]


def evaluated_row(result, arch, val, device, base_macs, base_params):
    """Read a network back from its file (for timing), count it, take its accuracy; return (row, model)."""
    model, _, deps = model_from_hdf5(result["file"], arch)
    model = model.to(device)
    top1 = top1_of(result["file"], arch, val, device)
    final = result.get("final_file")
    final_top1 = top1_of(final, arch, val, device) if final else top1
    macs, params = count(arch_graph(arch), deps)
    row = {**result, "deps": deps, "converted_top1": top1, "final_top1": final_top1, "macs": macs, "params": params,
           "macs_ratio": macs / base_macs, "params_ratio": params / base_params}
    if row["logit_diff"] is not None:
        row["exact"] = row["logit_diff"] < EXACT_TOL
    return row, model


def key(row):
    return row["name"] if row["name"] == "base" else f"{row['name']}@{row['target']}#{row['seed']}"


def add_latency(rows, models, arch, device, repeats, onnx=False):
    """Time every network's deploy form, all in turns, and the speed-ups over the base; with `onnx`, in ONNX
    Runtime too (`ort_*`), in the same turns as PyTorch on the CPU."""
    size, cpu = get_arch(arch).input_size, device.type == "cpu"
    ms = measure(models, arch, size, device, (1, 64), repeats, forms=("fused",), onnx=onnx and cpu)
    if onnx and not cpu:  # ONNX Runtime's CPU execution provider: timed on the CPU, in turns with PyTorch there
        for name, on_cpu in measure(models, arch, size, "cpu", (1, 64), repeats, forms=("fused",), onnx=True).items():
            ms[name].update({k: v for k, v in on_cpu.items() if k[3:] == (ORT,)})
    base = ms["base"]
    for row in rows:
        t = ms[key(row)]
        row.update(latency_b1=t[("fused", "float32", 1)], latency_b64=t[("fused", "float32", 64)],
                   speedup_b1=base[("fused", "float32", 1)] / t[("fused", "float32", 1)],
                   speedup_b64=base[("fused", "float32", 64)] / t[("fused", "float32", 64)])
        for b in (1, 64) if onnx else ():
            k = ("fused", "float32", b, ORT)
            row.update({f"ort_latency_b{b}": t[k], f"ort_speedup_b{b}": base[k] / t[k]})


def export_all(rows, arch, folder, val):
    images = next(iter(val.batches()))[0][:8].cpu()
    for row in rows:
        model, _, _ = model_from_hdf5(row.get("final_file") or row["file"], arch)
        path = os.path.join(folder, f"{key(row).replace('@', '-').replace('#', '-seed')}.onnx")
        print(f"   ONNX: {path}", flush=True)
        fused = export_onnx(model, arch, path)
        row["onnx"], row["onnx_diff"] = path, check_onnx(path, fused, images)


def base_note(path, data):
    """The footnote on a base trained on other data than the stages (the shipped one, under the demo), else None."""
    t = read_attrs(path).get("training") or {}
    if t.get("data") in (None, data):
        return None
    return (f"base: {os.path.relpath(path)}, trained for {t['epochs']} epochs on {t['data']} (seed {t['seed']}); every "
            f"stage here trains on {data}. So *from scratch* gets the budget's epochs of {data}, far fewer images than "
            "the base saw: a floor here, not Liu et al.'s equal budget; and *base + epochs* shows what training on "
            f"{data} alone does to the base.")


def measure_all(args, base, results, device):
    """One row per run (the base's too): accuracies, MACs, params, latency, the conversion proof."""
    arch, spec = args.arch, get_arch(args.arch)
    torch.manual_seed(args.seed)
    _, val = make_loaders(args.data, args.data_root, 100, device, image_size=spec.input_size,
                          num_classes=spec.num_classes)
    base_macs, base_params = count(arch_graph(arch), default_deps(arch))
    print(f"== measuring: every network read back from its file and timed (BN fused, fp32, {device}, "
          f"{torch.get_num_threads()} threads, median of {args.latency_repeats}, in turns)", flush=True)
    base_result = {"name": "base", "label": "base", "target": None, "seed": args.seed, "file": base,
                   "before_top1": read_attrs(base).get("metrics", {}).get("top1"), "logit_diff": None,
                   "note": base_note(base, args.data)}
    rows, models = [], {}
    for result in [base_result, *results]:
        row, model = evaluated_row(result, arch, val, device, base_macs, base_params)
        rows.append(row)
        models[key(row)] = model
    add_latency(rows, models, arch, device, args.latency_repeats, args.onnx)
    if args.onnx:
        export_all(rows, arch, os.path.join(args.output, "onnx"), val)
    return rows, val.dataset_size
