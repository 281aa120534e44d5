"""The reproduction table: for every paper's headline setting (the registry's `Method.headlines`), the published
number, ours from the comparison's paper budgets, the difference and the status.

    python compare_methods.py --reproduction                # every row, "not run" where no comparison is given
    python compare_methods.py --reproduction compare_models/src56_cifar10/comparison.json \
        compare_models/src56_cifar10_paper-quarter/comparison.json

A row is `done` from a `--budget paper` comparison, `partial` from `--budget paper-quarter` (a quarter of every
stage's epochs), else `not run`; the full budget wins where both exist. docs/RESULTS.md starts with its output.
"""
STATUS = {"paper": "done", "paper-quarter": "partial (a quarter of the epochs)"}
HEADER = ["paper", "setting", "published top-1, base -> pruned", "published FLOPs pruned", "ours, base -> pruned",
          "our MACs pruned", "difference", "budget, seeds, hardware", "status"]


def ours(comparison, name):
    """(base row, the method's headline row) of one comparison, or None."""
    rows = comparison["rows"]
    found = [r for r in rows if r["name"] == name and r.get("headline")]
    base = next((r for r in rows if r["name"] == "base"), None)
    return (base, found[0]) if found and base else None


def top1(row):
    std = row.get("final_top1_std")
    return f"{row['final_top1']:.2f}" + (f" ± {std:.2f}" if std is not None else "")


def table_rows(headlines, comparisons):
    """One row of strings per headline setting. `headlines`: [(method name, arch, Headline)] (the registry's
    `headlines()`); `comparisons`: the contents of comparison.json files."""
    out = []
    for name, arch, h in headlines:
        published = (f"{h.base_top1:.2f} -> {h.top1:.2f}" if h.top1 is not None
                     else "not verified (about no drop)")
        runs = [(c, ours(c, name)) for c in comparisons if c["settings"]["arch"] == arch
                and c["settings"]["budget"] in STATUS]
        runs = sorted([(c, o) for c, o in runs if o], key=lambda co: list(STATUS).index(co[0]["settings"]["budget"]))
        row = [h.paper, f"{arch}: `{' '.join(h.flags)}`", published, f"{h.flops_pruned:.2f} %"]
        if not runs:
            out.append(row + ["-", "-", "-", "-", "not run"])
            continue
        c, (base, r) = runs[0]
        s = c["settings"]
        diff = f"{r['final_top1'] - h.top1:+.2f}" if h.top1 is not None else "-"
        out.append(row + [f"{base['final_top1']:.2f} -> {top1(r)} (n = {r['n']})", f"{1 - r['macs_ratio']:.2%}",
                          diff, f"{s['budget']}, seeds {s['seeds']}, {s.get('hardware', s.get('latency', '?'))}",
                          STATUS[s["budget"]]])
    return out


def markdown(headlines, comparisons):
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in table_rows(headlines, comparisons)])
