"""One C-SGD iteration: `python csgd/do_csgd.py -a src56 -i 0`, then `-i 1`, `-i 2` (or under torchrun).

Iteration K starts from iteration K-1's converted net, `csgd_models/{arch}_train/itr{K-1}/finish_converted.hdf5`
(K=0: the base model; for the CIFAR nets it is trained first with train_base_model.py's recipe when
`{arch}_train/finish.hdf5` is missing). It clusters the filters of every group whose width changes
(k-means on the kernels, computed once on rank 0 and broadcast), trains the full-width network with the
centripetal update, then merges each cluster into one filter and writes, under
`csgd_models/{arch}_train/itr{K}/`:

    clusters.json   the clusters per channel group      finish.hdf5             the trained full-width net
    log.txt, tb/, config.json, checkpoint.pth            finish_converted.hdf5   the narrow net (+deps)

A finished iteration is not redone; an interrupted one resumes when re-run. Every default below is the
original code's recipe; every flag overrides.
"""
if not __package__:  # run as a file, not as a module: the repository root goes on the path, as with -m
    import os
    import sys
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import argparse
import os

from base_model import get_arch
from csgd.centripetal import VECTOR_FACTOR, CentripetalHook
from csgd.clustering import METHODS, cluster_groups
from csgd.convert import decide
from csgd.schedule import (
    ROUNDINGS,
    Schedule,
    default_schedule,
    group_targets,
    iteration_start,
    itr_dir,
    parse_ratios,
    target_deps,
)
from utils.atomic import write_json
from utils.command import run_main
from utils.pruning.channel_graph import arch_graph
from utils.pruning.flops import count
from utils.training import dist, skeleton
from utils.training.engine import EvaluateStart

RECIPES = {  # per C-SGD iteration
    "cifar10": dict(epochs=600, batch_size=64, lr=3e-2, milestones=(200, 400), weight_decay=1e-4, nesterov=True),
    "imagenet": dict(epochs=70, batch_size=256, lr=3e-3, milestones=(30, 50, 60), weight_decay=1e-4, nesterov=True,
                     warmup_epochs=5, warmup="linear", warmup_factor=0.0),  # linear from 0, as the original
}
STRENGTH = {"cifar10": 3e-3, "imagenet": 0.05}  # eps, the original's centri_strength
MODELS_DIR = "csgd_models"


def parse(argv=None):
    p = skeleton.parser(__doc__, "weights to start from (default: the base model, or itr{K-1}'s converted net)")
    p.add_argument("-i", "--itr", type=int, required=True, help="the iteration to run: 0, 1, ...")
    c = p.add_argument_group("C-SGD (defaults: the original's for the arch)")
    c.add_argument("--ratios", help="target fraction of the original widths per iteration "
                                    "(src56: 13/16,11/16,5/8; sres50: 0.7,0.6,0.5,0.4,0.3)")
    skeleton.add_groups(c, None, "--scope", note="src56 all, sres50 internal")
    c.add_argument("--rounding", choices=ROUNDINGS, help="target width rounding (src56: floor; sres50: ceil)")
    skeleton.add_round_to(c)
    c.add_argument("--centri-strength", "--eps", dest="strength", type=float,
                   help="centripetal strength eps (cifar10: 3e-3, imagenet: 0.05)")
    c.add_argument("--vector-factor", type=float, default=VECTOR_FACTOR,
                   help="eps multiplier on BN weight/bias and conv bias (default %(default)s)")
    c.add_argument("--cluster", choices=METHODS, default="kmeans", help="clustering method (default %(default)s)")
    c.add_argument("--cluster-seed", type=int, default=0, help="k-means seed (default %(default)s)")
    c.add_argument("--models-dir", default=MODELS_DIR, help="where the itr folders live (default %(default)s)")
    c.add_argument("--train-base", action=argparse.BooleanOptionalAction, default=True,
                   help="-i 0 on a CIFAR net: train the base model when it is missing (default on)")
    return skeleton.parse(p, argv)


def prepare(run, target):
    """Cluster every group whose width changes (rank 0, broadcast); the centripetal update as the hook."""
    args, ctx, graph, model = run.args, run.ctx, run.graph, run.model
    targets = group_targets(graph, model.deps, target)
    if not targets:
        raise ValueError(f"{run.init} already has iteration {args.itr}'s widths; nothing to slim")
    clusters = cluster_groups(model.state_dict(), graph, targets, args.cluster, args.cluster_seed) \
        if ctx.is_main else None
    clusters = dist.broadcast_object(clusters)
    if ctx.is_main:
        write_json(os.path.join(run.cfg.output, "clusters.json"), {
            str(g): {"convs": [p.conv for p in graph.groups[g].producers], "clusters": c} for g, c in clusters.items()},
            indent=None)
    strength = STRENGTH[run.spec.dataset] if args.strength is None else args.strength
    hook = CentripetalHook(graph, clusters, strength, run.cfg.weight_decay, run.cfg.bn_weight_decay,
                           args.vector_factor)
    (m0, _), (m1, _) = count(graph, model.deps), count(graph, target)
    line = (f"C-SGD {args.arch} itr {args.itr} from {run.init}: {len(clusters)} groups to cluster ({args.cluster}), "
            f"MACs {m0:,} -> {m1:,}; target deps {target}")
    return skeleton.Setup([EvaluateStart("start model"), hook], hook.param_rule, [line])


def run(args):
    """Run iteration args.itr; return the skeleton's Run, or None when the iteration is already done."""
    args.data = args.data or get_arch(args.arch).dataset
    skeleton.config(args, RECIPES)  # every flag checked before the base model may be trained
    for flag, value in (("--eps", args.strength), ("--vector-factor", args.vector_factor)):
        if value is not None and not 0 <= value < float("inf"):
            raise ValueError(f"{flag} {value}: must not be negative")
    s = default_schedule(args.arch)
    schedule = Schedule(parse_ratios(args.ratios) if args.ratios else s.ratios, args.groups or s.groups,
                        args.rounding or s.rounding)
    target = target_deps(args.arch, arch_graph(args.arch), schedule, args.itr, skeleton.check_round_to(args.round_to))
    out = args.output or itr_dir(args.models_dir, args.arch, args.itr)
    done = skeleton.converted_file(out)
    if done:
        print(f"iteration {args.itr} is already done: {done} (delete it to redo)")
        return None
    start = iteration_start(args)
    return skeleton.main(args, RECIPES, out, name="csgd", label=f"C-SGD itr {args.itr}", init=lambda a: start,
                         prepare=lambda r: prepare(r, target), target_deps=target,
                         decide=lambda r: decide(r.trainer.model, r.graph, r.hook.clusters, r.hook.deviation()))


def main(argv=None):
    run(parse(argv))


if __name__ == "__main__":
    run_main(main)
