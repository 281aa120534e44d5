"""The comparison's parts that are not orchestration: how runs over seeds become mean +- std (`aggregate`), the
sentences that say which method beats which baseline (`verdicts`), and the markdown table. Pure functions of the
rows compare_methods.py measures; the plots are in plots.py. What the comparison asks of each method and
baseline is its `Method` (utils/training/method.py), registered in utils/registry.py."""
import statistics

EXACT_TOL = 1e-3  # a conversion is exact when the logits agree within float32 round-off (|logits| ~ 10)
JUDGED_AGAINST = ("l1", "scratch")  # the baselines every method is judged against (Li et al.; Liu et al.)


# --- runs over seeds ------------------------------------------------------------------------------
MEAN_KEYS = ("before_top1", "converted_top1", "final_top1", "macs", "macs_ratio", "params", "latency_b1",
             "latency_b64", "speedup_b1", "speedup_b64")
ORT_KEYS = ("ort_latency_b1", "ort_latency_b64", "ort_speedup_b1", "ort_speedup_b64")  # with --onnx: ONNX Runtime's


def aggregate(runs):
    """One row per (name, target) from the per-seed runs: the mean of every number, its sample std (`_std`)
    and n; the largest logit difference and whether every conversion was exact."""
    groups = {}
    for r in runs:
        groups.setdefault((r["name"], r.get("target")), []).append(r)
    rows = []
    for (name, target), rs in groups.items():
        row = {"name": name, "label": rs[0]["label"], "target": target, "n": len(rs), "seeds": [r.get("seed") for r in rs],
               "note": rs[0].get("note"), "baseline": rs[0].get("baseline", False), "headline": rs[0].get("headline")}
        for k in MEAN_KEYS + tuple(k for k in ORT_KEYS if k in rs[0]):
            values = [r[k] for r in rs if r.get(k) is not None]
            row[k] = statistics.fmean(values) if values else None
            row[f"{k}_std"] = statistics.stdev(values) if len(values) > 1 else None
        diffs = [r["logit_diff"] for r in rs if r.get("logit_diff") is not None]
        row["logit_diff"] = max(diffs) if diffs else None
        exact = [r["exact"] for r in rs if r.get("exact") is not None]
        row["exact"] = all(exact) if exact else None
        if "onnx_diff" in rs[0]:
            row["onnx_diff"] = max(r["onnx_diff"] for r in rs)
        rows.append(row)
    return rows


def spread_text(row, key="final_top1"):
    mean, std = row.get(key), row.get(f"{key}_std")
    return "-" if mean is None else f"{mean:.2f}" + (f" ± {std:.2f}" if std is not None else "")


def verdicts(rows):
    """For each method at each target, a sentence per baseline of JUDGED_AGAINST: whether its final top-1
    beats the baseline's by more than the seeds' spread (the sum of the two sample stds), is beaten by
    more, or is within it; with one seed it is not resolved."""
    by_key = {(r["name"], r["target"]): r for r in rows}
    out = []
    for m in rows:
        if m["name"] in JUDGED_AGAINST or m["target"] is None or m.get("baseline"):
            continue
        parts = []
        for b_name in JUDGED_AGAINST:
            b = by_key.get((b_name, m["target"]))
            if b is None or m["final_top1"] is None or b["final_top1"] is None:
                continue
            delta = m["final_top1"] - b["final_top1"]
            if min(m["n"], b["n"]) < 2:
                parts.append(f"{delta:+.2f} points against {b['label']} ({spread_text(b)}): not resolved with "
                             f"n = {min(m['n'], b['n'])}")
                continue
            spread = m["final_top1_std"] + b["final_top1_std"]
            if abs(delta) > spread:
                parts.append(f"{'beats' if delta > 0 else 'loses to'} {b['label']} ({spread_text(b)}) by "
                             f"{abs(delta):.2f} points, more than the seeds' spread ({spread:.2f})")
            else:
                parts.append(f"is within the seeds' spread ({spread:.2f}) of {b['label']} ({spread_text(b)}): "
                             f"{delta:+.2f} points")
        if parts:
            out.append(f"At {m['target']:.0%} of the MACs, {m['label']} ({spread_text(m)}, n = {m['n']}) "
                       + "; ".join(parts) + ".")
    return out


# --- the markdown --------------------------------------------------------------------------------
COLUMNS = [  # (header, key, format); a mean over seeds shows its std
    ("method", "label", "{}"),
    ("MACs target", "target", "{:.0%}"),
    ("n", "n", "{}"),
    ("top-1 before conversion", "before_top1", "{:.2f}"),
    ("top-1 converted", "converted_top1", "{:.2f}"),
    ("top-1 final", "final_top1", "{:.2f}"),
    ("MACs", "macs", "{:,.0f}"),
    ("MACs %", "macs_ratio", "{:.1%}"),
    ("params", "params", "{:,.0f}"),
    ("latency b1 ms", "latency_b1", "{:.2f}"),
    ("latency b64 ms", "latency_b64", "{:.1f}"),
    ("speed-up b64", "speedup_b64", "{:.2f}x"),
    ("max logit diff", "logit_diff", "{:.2g}"),
    ("exact", "exact", "{}"),
]
ORT_COLUMNS = [("ORT latency b1 ms", "ort_latency_b1", "{:.2f}"), ("ORT latency b64 ms", "ort_latency_b64", "{:.1f}"),
               ("ORT speed-up b64", "ort_speedup_b64", "{:.2f}x")]
WITH_STD = ("before_top1", "converted_top1", "final_top1")


def cell(row, key, fmt):
    value = row.get(key)
    if value is None:
        return "-"
    if key == "exact":
        return "yes" if value else "**NO**"
    if key in WITH_STD and row.get(f"{key}_std") is not None:
        return f"{value:.2f} ± {row[f'{key}_std']:.2f}"
    return fmt.format(value)


def markdown_table(rows, onnx=False):
    columns = COLUMNS
    if onnx:  # ONNX Runtime's latency beside PyTorch's, its logit check last
        at = [k for _, k, _ in COLUMNS].index("speedup_b64") + 1
        columns = COLUMNS[:at] + ORT_COLUMNS + COLUMNS[at:] + [("ONNX Runtime diff", "onnx_diff", "{:.2g}")]
    lines = ["| " + " | ".join(h for h, _, _ in columns) + " |",
             "|" + "|".join("---" if k == "label" else "---:" for _, k, _ in columns) + "|"]
    for row in rows:
        lines.append("| " + " | ".join(cell(row, k, f) for _, k, f in columns) + " |")
    return lines


def report_markdown(rows, settings, notes, commands, onnx=False, reproduction=None):
    """The whole comparison.md: settings, the table, (the paper budgets) the reproduction table, the verdicts, what
    each number means, the commands."""
    targets = ", ".join(f"{t:.0%}" for t in settings["macs_targets"])
    aim = "each at its paper's headline setting" if any(r.get("headline") for r in rows) else f"at {targets} of the MACs"
    lines = [f"# {settings['arch']} on {settings['data']}: the four methods and the baselines {aim}", "",
             f"Budget `{settings['budget']}`; {settings['test_images']:,} test images; seeds {settings['seeds']} "
             f"(n per row); groups pruned: {settings.get('groups', 'internal')}"
             + (f", widths in multiples of {settings['round_to']}" if settings.get("round_to", 1) > 1 else "")
             + ("; ResRep aimed at " + ", ".join(f"{t:.0%}" for t in settings["latency_targets"]) + " of the base's "
                "predicted latency instead of the MACs target of its row" if settings.get("latency_targets") else "")
             + f"; latency: {settings['latency']}; written {settings['date']}.", "",
             *markdown_table(rows, onnx), "",
             *(["## Against the papers", "", reproduction, ""] if reproduction else []),
             "## What the numbers say", "",
             *[f"- {v}" for v in verdicts(rows)], "",
             "- *top-1*: mean ± sample std over the seeds (n of them); one image is "
             f"{100 / settings['test_images']:.2g} point. *before conversion*: the method's trained network before "
             "it is made narrow (ResRep: with compactors and masks; C-SGD: full width, clustered; AOFP: masked; SFP: "
             "zeroed; L1: the base with the dropped filters zeroed); *converted*: the narrow network, as its stage "
             "evaluated it on the whole test set before writing it; *final*: after a fine-tune (AOFP, L1), else the "
             "converted net.",
             f"- *max logit diff*: the conversion's proof (fp32), the largest over the seeds; *exact* when below "
             f"{EXACT_TOL:g}.",
             "- *latency*: the BN-fused network, fp32, eval mode, median of repeats, every network timed in turns; "
             "speed-up over the base in the same form.", ""]
    if onnx:
        lines.insert(-1, "- *ORT latency*: the same BN-fused networks exported to ONNX and run in ONNX Runtime (CPU "
                         "execution provider, fp32, as many intra-op threads as PyTorch's), timed in the same turns as "
                         "PyTorch's passes on the CPU; speed-up over the base in ONNX Runtime.")
    lines += [f"- {n}" for n in notes]
    lines += ["", "## Commands of each stage", "", *[f"    {c}" for c in commands], ""]
    return "\n".join(lines)
