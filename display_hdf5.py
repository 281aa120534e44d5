"""What is in a weight file: every array's name, shape, dtype and statistics, the totals, and, when
the file carries `deps`, the widths with their MACs and params.

    python display_hdf5.py resrep_models/src56_train/finish_converted.hdf5
"""

import numpy as np

from utils.command import ArgumentParser, run_main

NEAR_ZERO = 1e-5  # the original viewer's threshold; ResRep's pruned compactor rows fall under it


def array_stats(value):
    a = np.asarray(value, dtype=np.float64).reshape(-1)
    if a.size == 0:
        return dict(mean=0.0, std=0.0, min=0.0, max=0.0, zero=0, near_zero=0)
    return dict(mean=a.mean(), std=a.std(), min=a.min(), max=a.max(), zero=int((a == 0).sum()),
                near_zero=int((np.abs(a) <= NEAR_ZERO).sum()))


def kind(name, shape):
    """What the original viewer counts: conv kernels, matrices, BN statistics and affine, biases."""
    if len(shape) == 4:
        return "conv"
    if len(shape) == 2:
        return "matrix"
    for suffix, k in ((".running_mean", "bn mean"), (".running_var", "bn var"), (".num_batches_tracked", "counter"),
                      ("bn.weight", "bn gamma"), ("bn.bias", "bn beta"), (".bias", "bias")):
        if name.endswith(suffix):
            return k
    return "vector"


def describe(path):
    """The report as a list of lines (raises WeightFileError for a bad file)."""
    from utils.tools.store import infer_arch, read_hdf5

    state, deps, attrs = read_hdf5(path)
    lines = [f"{path}"]
    lines += [f"  {k}: {v}" for k, v in sorted(attrs.items())]
    width = max([len(k) for k in state] + [4])
    lines.append(f"{'name':<{width}}  {'shape':<18} {'dtype':<8} {'mean':>11} {'std':>10} {'min':>11} "
                 f"{'max':>11} {'zeros':>7} {'|x|<=1e-5':>9}")
    totals = {}
    for name, t in state.items():
        s = array_stats(t.numpy())
        lines.append(f"{name:<{width}}  {str(tuple(t.shape)):<18} {str(t.dtype).removeprefix('torch.'):<8} "
                     f"{s['mean']:>11.4g} {s['std']:>10.4g} {s['min']:>11.4g} {s['max']:>11.4g} "
                     f"{s['zero']:>7} {s['near_zero']:>9}")
        k = kind(name, tuple(t.shape))
        totals[k] = totals.get(k, 0) + t.numel()
    n = sum(t.numel() for t in state.values())
    lines.append(f"{len(state)} arrays, {n:,} numbers: "
                 + ", ".join(f"{k} {v:,}" for k, v in sorted(totals.items())))
    if deps is None:
        lines.append("no deps in this file (a training file keeps the arch's default widths)")
        return lines
    lines.append(f"deps ({len(deps)}): {deps}")
    arch = attrs.get("arch") or infer_arch(state, deps)
    if arch is None:
        lines.append("arch unknown: MACs not computed")
        return lines
    from utils.pruning.flops import arch_cost

    try:
        c = arch_cost(arch, deps)
    except ValueError as e:
        lines.append(f"{arch}: these deps do not build ({e})")
        return lines
    lines.append(f"{arch}: {c['macs']:,} MACs ({c['macs_ratio']:.2%} of base), "
                 f"{c['params']:,} params ({c['params_ratio']:.2%} of base)")
    return lines


def main(argv=None):
    p = ArgumentParser(description=__doc__)
    p.add_argument("file", help="an hdf5 weight file")
    args = p.parse_args(argv)
    print("\n".join(describe(args.file)))


if __name__ == "__main__":
    run_main(main)
