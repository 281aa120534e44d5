"""The comparison's parts that are not orchestration: what it asks of each method (`Entry`, one per
method package, in its comparison.py), and what it writes: a markdown table, a JSON record and a PNG
plot of accuracy against MACs, pure functions of the rows compare_methods.py measures."""
import os
from dataclasses import dataclass, field
from typing import Callable

from utils.atomic import atomic_write

EXACT_TOL = 1e-3  # a conversion is exact when the logits agree within float32 round-off (|logits| ~ 10)



@dataclass(frozen=True)
class Entry:
    """What a method (or a baseline) tells the comparison. Its stage runs `main(argv)`, the entry script
    `script`, with `-a ARCH --init BASE -o FOLDER`, the flags `aim(arch, macs_target)` returns, and the
    budget's flags; it is done when `done` (relative to its folder) exists. `note(conversion, setting)`
    is the table's footnote: `conversion` is the converted file's `conversion` attribute, `setting` the
    second value `aim` returned (the solved ratio or rate, or None)."""
    name: str  # the stage folder and the JSON key: "resrep"
    label: str  # "ResRep"
    script: str  # as a user types it: "rr/exp_resrep.py"
    main: Callable  # main(argv)
    aim: Callable  # (arch, macs_target) -> (flags, setting)
    budgets: dict = field(default_factory=dict)  # {"demo": flags, "smoke": flags}; "paper": the recipe's own
    note: Callable = lambda conversion, setting: ""
    final: str | None = None  # a network trained after the conversion (AOFP's fine-tune), relative path
    done: str = "finish_converted.hdf5"


COLUMNS = [  # (header, key, format)
    ("method", "label", "{}"),
    ("top-1 before conversion", "before_top1", "{:.2f}"),
    ("top-1 converted", "converted_top1", "{:.2f}"),
    ("top-1 final", "final_top1", "{:.2f}"),
    ("MACs", "macs", "{:,}"),
    ("MACs %", "macs_ratio", "{:.1%}"),
    ("params", "params", "{:,}"),
    ("latency b1 ms", "latency_b1", "{:.2f}"),
    ("latency b64 ms", "latency_b64", "{:.1f}"),
    ("speed-up b64", "speedup_b64", "{:.2f}x"),
    ("max logit diff", "logit_diff", "{:.2g}"),
    ("exact", "exact", "{}"),
]


def cell(row, key, fmt):
    value = row.get(key)
    if value is None:
        return "-"
    if key == "exact":
        return "yes" if value else "**NO**"
    return fmt.format(value)


def markdown_table(rows, onnx=False):
    columns = COLUMNS + ([("ONNX Runtime diff", "onnx_diff", "{:.2g}")] if onnx else [])
    lines = ["| " + " | ".join(h for h, _, _ in columns) + " |",
             "|" + "|".join("---" if k == "label" else "---:" for _, k, _ in columns) + "|"]
    for row in rows:
        lines.append("| " + " | ".join(cell(row, k, f) for _, k, f in columns) + " |")
    return lines


def report_markdown(rows, settings, notes, commands, onnx=False):
    """The whole comparison.md: settings, the table, what each number means, the commands of each stage."""
    lines = [f"# {settings['arch']} on {settings['data']}: ResRep, C-SGD, AOFP and SFP at "
             f"{settings['macs_target']:.0%} of the MACs", "",
             f"Budget `{settings['budget']}`; latency: {settings['latency']}; written {settings['date']}.", "",
             *markdown_table(rows, onnx), "",
             "- *top-1 before conversion*: the method's trained network before it is made narrow (ResRep: with "
             "compactors and masks; C-SGD: full width, clustered; AOFP: masked; SFP: zeroed).",
             "- *top-1 converted*: the narrow network read back from its hdf5 file and evaluated anew; "
             "*final*: after AOFP's fine-tuning of the narrow net (the others: the converted net).",
             f"- *max logit diff*: the conversion's proof, on validation images; *exact* when below {EXACT_TOL:g}.",
             "- *latency*: the BN-fused narrow network, eval mode, median of repeats; speed-up over the base "
             "in the same form.", ""]
    lines += [f"- {n}" for n in notes]
    lines += ["", "## Commands of each stage", "", *[f"    {c}" for c in commands], ""]
    return "\n".join(lines)


def plot(rows, path, title, macs_target=None):
    """Top-1 (final) against MACs: one point per method and the base; written atomically as PNG."""
    import matplotlib

    matplotlib.use("Agg")  # no screen
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.4), dpi=120)
    for row in rows:
        base = row["name"] == "base"
        speed = row.get("speedup_b64")
        label = row["label"] + ("" if base or speed is None else f": {speed:.2f}x faster at batch 64")
        ax.scatter([row["macs"] / 1e6], [row["final_top1"]], s=110 if base else 60, marker="*" if base else "o",
                   zorder=3, color="black" if base else None, label=label)
    if macs_target is not None:
        base = next((r for r in rows if r["name"] == "base"), None)
        if base is not None:
            ax.axvline(base["macs"] * macs_target / 1e6, color="grey", linestyle=":", linewidth=1,
                       label=f"target {macs_target:.0%} of the MACs")
    ax.set_xlabel("MACs (millions)")
    ax.set_ylabel("top-1 accuracy (%)")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")  # labels, not annotations: the points crowd at the target
    fig.tight_layout()

    def write(tmp):
        with open(tmp, "wb") as f:
            fig.savefig(f, format="png")

    try:
        atomic_write(path, write)
    finally:
        plt.close(fig)
    return os.fspath(path)
