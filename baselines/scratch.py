"""The narrow network trained from scratch (Liu et al., "Rethinking the Value of Network Pruning", ICLR
2019), the comparison's second baseline: `python baselines/scratch.py -a src56 --ratio 0.5`.

The architecture a pruning method would reach with one ratio for every pruned group (`--groups`,
internal by default; floor(ratio * width) channels, `--ratio` or the hundredth nearest `--macs-target`),
built at those widths and trained from random initialisation with train_base_model.py's recipe (pass
`--epochs` to give it the base's plus a method's epochs, as Liu et al. do). Writes
scratch_models/{arch}_train/finish.hdf5 (with deps). Re-running resumes.
"""
if not __package__:  # run as a file, not as a module: the repository root goes on the path, as with -m
    import os
    import sys
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import os
from fractions import Fraction

import train_base_model
from base_model import default_deps, get_arch
from utils.command import run_main
from utils.pruning.channel_graph import arch_graph
from utils.pruning.flops import uniform_deps, uniform_ratio
from utils.training import skeleton


def parse(argv=None):
    p = skeleton.parser(__doc__, "not used: the network starts from random initialisation")
    g = p.add_argument_group("the narrow architecture")
    g.add_argument("--ratio", type=Fraction, help="the fraction of every pruned group's channels kept, e.g. 0.5")
    g.add_argument("--macs-target", type=float, help="instead of --ratio: the hundredth whose MACs come nearest")
    skeleton.add_groups(g, "internal")
    skeleton.add_round_to(g)
    return skeleton.parse(p, argv)


def narrow_deps(args):
    """The uniform widths the flags ask for, checked."""
    if args.init is not None:
        raise ValueError("--init: a network trained from scratch starts from random weights; leave --init out")
    if (args.ratio is None) == (args.macs_target is None):
        raise ValueError("give the kept fraction with --ratio R or a MACs target with --macs-target T (one of them)")
    if args.ratio is not None and not 0 < args.ratio <= 1:
        raise ValueError(f"--ratio {args.ratio}: the kept fraction of each group must be in (0, 1]")
    if args.macs_target is not None and not 0 < args.macs_target < 1:
        raise ValueError(f"--macs-target {args.macs_target}: the fraction of the MACs to keep must be in (0, 1)")
    graph, base = arch_graph(args.arch), default_deps(args.arch)
    skeleton.check_round_to(args.round_to)
    if args.ratio is None:
        return uniform_ratio(graph, base, args.groups, args.macs_target, args.round_to)[1]
    return uniform_deps(graph, base, args.groups, args.ratio, args.round_to)


def main(argv=None):
    args = parse(argv)
    get_arch(args.arch)
    args.deps = narrow_deps(args)
    skeleton.main(args, train_base_model.RECIPES, os.path.join("scratch_models", f"{args.arch}_train"),
                  label="from scratch")


if __name__ == "__main__":
    run_main(main)
