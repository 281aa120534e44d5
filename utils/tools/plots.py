"""The comparison's two plots, written atomically as PNG: top-1 against MACs, and the measured speed-up
against MACs; one line per method and baseline over the MACs targets (error bars: the seeds' std), the
base as a star."""
import os

from utils.atomic import atomic_write


def _lines(ax, rows, key):
    """One line (with error bars) per name over its targets; the base, and untargeted rows, as points."""
    by_name = {}
    for r in rows:
        by_name.setdefault(r["name"], []).append(r)
    for name, rs in by_name.items():
        rs = sorted(rs, key=lambda r: r["macs"])
        x = [r["macs"] / 1e6 for r in rs]
        y = [r[key] for r in rs]
        err = [r.get(f"{key}_std") or 0 for r in rs]
        if name == "base":
            ax.scatter(x, y, s=130, marker="*", color="black", zorder=4, label="base")
        else:
            ax.errorbar(x, y, yerr=err, marker="s" if rs[0].get("baseline") else "o", linestyle="--" if
                        rs[0].get("baseline") else "-", capsize=3, label=rs[0]["label"] + (f" (n = {rs[0]['n']})"
                                                                                           if rs[0]["n"] > 1 else ""))


def _figure(rows, key, ylabel, title, path):
    import matplotlib

    matplotlib.use("Agg")  # no screen
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.8, 4.6), dpi=120)
    _lines(ax, [r for r in rows if r.get(key) is not None], key)
    ax.set_xlabel("MACs (millions)")
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()

    def write(tmp):
        with open(tmp, "wb") as f:
            fig.savefig(f, format="png")

    try:
        atomic_write(path, write)
    finally:
        plt.close(fig)
    return os.fspath(path)


def plot_accuracy(rows, path, title):
    return _figure(rows, "final_top1", "top-1 accuracy (%), final", title, path)


def plot_speedup(rows, path, title):
    return _figure(rows, "speedup_b64", "measured speed-up over the base, batch 64", title, path)
