"""The narrow network trained from scratch (Liu et al., "Rethinking the Value of Network Pruning", ICLR
2019), the comparison's second baseline: `python baselines/scratch.py -a src56 --ratio 0.5`.

The architecture a pruning method would reach with one ratio for every pruned group (`--groups`,
internal by default; floor(ratio * width) channels, `--ratio` or the hundredth nearest `--macs-target`),
built at those widths and trained from random initialisation with train_base_model.py's recipe (pass
`--epochs` to give it the base's plus a method's epochs, as Liu et al. do). Writes
scratch_models/{arch}_train/finish.hdf5 (with deps). Re-running resumes.
"""
from base_model import default_deps
from baselines.l1_pruning import add_ratio_flags, solve, solve_ratio
from baselines.plain import BASE_BUDGETS, RECIPES, TUNE
from utils.pruning.channel_graph import arch_graph
from utils.pruning.flops import uniform_deps
from utils.training.method import Method, no_start
from utils.command import arch_folder


def validate(args):
    """The uniform widths the flags ask for, as args.deps."""
    solve_ratio(args)
    args.deps = uniform_deps(arch_graph(args.arch), default_deps(args.arch), args.groups, args.ratio, args.round_to)


def base_plus_a_method(base, method):
    """The base's flags of a budget with its --epochs raised by a method's, as Liu et al. train the scratch net."""
    epochs = lambda flags: int(flags[flags.index("--epochs") + 1])
    at = base.index("--epochs") + 1
    return [*base[:at], str(epochs(base) + epochs(method)), *base[at + 1:]]


SCRATCH = Method(
    "scratch", "from scratch", "baselines/scratch.py", __doc__, RECIPES,
    output=lambda args: f"scratch_models/{arch_folder(args.arch)}_train",
    flags=lambda p: add_ratio_flags(p, "the narrow architecture"), validate=validate, start=no_start,
    init_help="not used: the network starts from random initialisation",
    baseline=True, from_base=False, converts=False, final="finish.hdf5", done="finish.hdf5",
    solve=solve,
    # the base's recipe in each budget, a method's epochs longer
    budgets={"demo": base_plus_a_method(BASE_BUDGETS["demo"], TUNE["demo"]),
             "study": base_plus_a_method(BASE_BUDGETS["study"], TUNE["study"]),
             "smoke": TUNE["smoke"]},
    note=lambda conversion, ratio: (
        f"from scratch (Liu et al. 2019): the uniform widths x{ratio} trained from random weights for the budget's "
        "base epochs plus a method's."),
)
