"""One C-SGD iteration: `python csgd/do_csgd.py -a src56 -i 0`, then `-i 1`, `-i 2` (or under torchrun).

Iteration K starts from iteration K-1's converted model, `csgd_models/{arch}_train/itr{K-1}/pruned.hdf5`
(K=0: the base model; for the CIFAR nets it is trained first with train_base_model.py's recipe when
`{arch}_train/finish.hdf5` is missing). It clusters the filters of every group whose width changes
(k-means on the kernels, computed once on rank 0 and broadcast), trains the full-width network with the
centripetal update, then merges each cluster into one filter and writes, under
`csgd_models/{arch}_train/itr{K}/`:

    clusters.json   the clusters per channel group      finish.hdf5   the trained full-width net (+deps)
    pruned.hdf5     the converted narrow net (+deps)     log.txt, tb/, config.json, checkpoint.pth

A finished iteration (pruned.hdf5 present) is not redone; an interrupted one resumes when re-run.
Every default below is the original code's recipe; every flag overrides.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import argparse  # noqa: E402
import json  # noqa: E402

import torch  # noqa: E402

from base_model import build_model, default_deps, get_arch  # noqa: E402
from csgd.centripetal import VECTOR_FACTOR, CentripetalHook  # noqa: E402
from csgd.clustering import METHODS, cluster_groups  # noqa: E402
from csgd.convert import convert_model
from utils.channel_graph import arch_graph_at  # noqa: E402
from csgd.schedule import (ROUNDINGS, SCOPES, Schedule, default_schedule, group_targets, parse_ratios,  # noqa: E402
                           target_deps)
from utils import dist  # noqa: E402
from utils.channel_graph import arch_graph  # noqa: E402
from utils.cli import add_train_args, base_weights, run_main, train_config  # noqa: E402
from utils.data import make_loaders  # noqa: E402
from utils.engine import Trainer, evaluate  # noqa: E402
from utils.flops import count  # noqa: E402
from utils.store import WeightFileError, atomic_write, is_deploy_form, load_state, read_hdf5, save_hdf5  # noqa: E402

RECIPES = {  # per C-SGD iteration
    "cifar10": dict(epochs=600, batch_size=64, lr=3e-2, milestones=(200, 400), weight_decay=1e-4, nesterov=True),
    "imagenet": dict(epochs=70, batch_size=256, lr=3e-3, milestones=(30, 50, 60), weight_decay=1e-4, nesterov=True,
                     warmup_epochs=5, warmup="linear", warmup_factor=0.0),  # linear from 0, as the original
}
STRENGTH = {"cifar10": 3e-3, "imagenet": 0.05}  # eps, the original's centri_strength
MODELS_DIR = "csgd_models"
LOGIT_BATCHES = 4  # validation batches the conversion proof compares logits on


def itr_dir(models_dir, arch, k):
    return os.path.join(models_dir, f"{arch}_train", f"itr{k}")


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-a", "--arch", required=True, help="src20/32/56/110, sres18/34/50/101/152 or vc")
    p.add_argument("-i", "--itr", type=int, required=True, help="the iteration to run: 0, 1, ...")
    c = p.add_argument_group("C-SGD (defaults: the original's for the arch)")
    c.add_argument("--ratios", help="target fraction of the original widths per iteration "
                                    "(src56: 13/16,11/16,5/8; sres50: 0.7,0.6,0.5,0.4,0.3)")
    c.add_argument("--scope", choices=list(SCOPES), help="groups to slim (src56: all; sres50: internal)")
    c.add_argument("--rounding", choices=ROUNDINGS, help="target width rounding (src56: floor; sres50: ceil)")
    c.add_argument("--centri-strength", "--eps", dest="strength", type=float,
                   help="centripetal strength eps (cifar10: 3e-3, imagenet: 0.05)")
    c.add_argument("--vector-factor", type=float, default=VECTOR_FACTOR,
                   help="eps multiplier on BN weight/bias and conv bias (default %(default)s)")
    c.add_argument("--cluster", choices=METHODS, default="kmeans", help="clustering method (default %(default)s)")
    c.add_argument("--cluster-seed", type=int, default=0, help="k-means seed (default %(default)s)")
    c.add_argument("--init", help="weights to start from (default: the base model, or itr{K-1}/pruned.hdf5)")
    c.add_argument("--models-dir", default=MODELS_DIR, help="where the itr folders live (default %(default)s)")
    c.add_argument("--train-base", action=argparse.BooleanOptionalAction, default=True,
                   help="-i 0 on a CIFAR net: train the base model when it is missing (default on)")
    return add_train_args(p).parse_args(argv)


def schedule_from(args):
    s = default_schedule(args.arch)
    ratios = parse_ratios(args.ratios) if args.ratios else s.ratios
    return Schedule(ratios, args.scope or s.scope, args.rounding or s.rounding)


def init_path(args, spec):
    """The file this iteration starts from; trains the CIFAR base for -i 0 when it is missing."""
    if args.init:
        if not os.path.exists(args.init):
            raise FileNotFoundError(f"--init {args.init}: no such file")
        return args.init
    if args.itr > 0:
        prev = os.path.join(itr_dir(args.models_dir, args.arch, args.itr - 1), "pruned.hdf5")
        if not os.path.exists(prev):
            raise FileNotFoundError(f"{prev} is missing: iteration {args.itr} starts from iteration {args.itr - 1}; "
                                    f"run `python csgd/do_csgd.py -a {args.arch} -i {args.itr - 1}` first")
        return prev
    path, make = base_weights(args.arch)
    if os.path.exists(path):
        return path
    if spec.dataset == "cifar10" and args.train_base:
        import train_base_model

        print(f"{path} is missing: training the base model first (python train_base_model.py -a {args.arch})")
        argv = ["-a", args.arch, "--data", args.data, "--device", args.device, "--seed", str(args.seed or 0)]
        if args.data_root:
            argv += ["--data-root", args.data_root]
        train_base_model.main(argv)
        return path
    raise FileNotFoundError(f"{path} (the base model) is missing: make it with `{make}`, or pass --init")


def load_start(arch, path, num_classes):
    state, deps, _ = read_hdf5(path)
    if is_deploy_form(state):
        raise WeightFileError(f"{path} has its BN folded into the convs; C-SGD needs a conv+BN weight file")
    model = build_model(arch, deps or default_deps(arch), num_classes)
    load_state(model, state, source=path)
    return model, state


def sync_buffers(model):
    """Rank 0's BN statistics on every rank, so all ranks convert and evaluate the same network."""
    if torch.distributed.is_initialized():
        for b in model.buffers():
            torch.distributed.broadcast(b, 0)


def run(args):
    """Run iteration args.itr; return a dict (clusters, metrics, conversion) or None when already done."""
    spec = get_arch(args.arch)
    args.data = args.data or spec.dataset
    schedule = schedule_from(args)
    target = target_deps(args.arch, arch_graph(args.arch), schedule, args.itr)
    out = args.output or itr_dir(args.models_dir, args.arch, args.itr)
    pruned_path = os.path.join(out, "pruned.hdf5")
    if os.path.exists(pruned_path):
        print(f"iteration {args.itr} is already done: {pruned_path} (delete it to redo)")
        return None
    start = init_path(args, spec)
    recipe = dict(RECIPES[spec.dataset], output=out)
    cfg = train_config(args, recipe, start=start, target_deps=target)
    strength = STRENGTH[spec.dataset] if args.strength is None else args.strength
    ctx = dist.setup(args.device, args.local_rank)
    try:
        torch.manual_seed(cfg.seed)
        model, state = load_start(args.arch, start, spec.num_classes)
        current = list(model.deps)
        graph = arch_graph_at(args.arch, current, spec.num_classes)
        targets = group_targets(graph, current, target)
        if not targets:
            raise ValueError(f"{start} already has iteration {args.itr}'s widths; nothing to slim")
        clusters = cluster_groups(state, graph, targets, args.cluster, args.cluster_seed) if ctx.is_main else None
        clusters = dist.broadcast_object(clusters)
        if ctx.is_main:
            os.makedirs(out, exist_ok=True)
            named = {str(g): {"convs": [p.conv for p in graph.groups[g].producers], "clusters": c}
                     for g, c in clusters.items()}
            atomic_write(os.path.join(out, "clusters.json"), lambda tmp: open(tmp, "w").write(json.dumps(named)))
        hook = CentripetalHook(graph, clusters, strength, cfg.weight_decay, cfg.bn_weight_decay, args.vector_factor)
        train, val = make_loaders(args.data, args.data_root, cfg.batch_size, ctx.device, ctx.rank, ctx.world_size,
                                  cfg.seed, args.workers, image_size=spec.input_size, num_classes=spec.num_classes)
        trainer = Trainer(cfg, model, train, val, ctx, hooks=[hook], param_rule=hook.param_rule)
        g0 = arch_graph(args.arch, spec.num_classes)
        (m0, _), (m1, _) = count(g0, current), count(g0, target)
        trainer.log.log(f"C-SGD {args.arch} itr {args.itr} from {start}: {len(clusters)} groups to cluster "
                        f"({args.cluster}), MACs {m0:,} -> {m1:,}; target deps {target}")
        base_metrics = None
        if not dist.broadcast_object(os.path.exists(trainer.checkpoint_path)):
            base_metrics = trainer.evaluate()
            trainer.log.log(f"start model: top1 {base_metrics['top1']:.2f} top5 {base_metrics['top5']:.2f}")
        metrics = trainer.fit()
        trained = trainer.model
        sync_buffers(trained)
        if ctx.is_main:
            save_hdf5(os.path.join(out, "finish.hdf5"), trained.state_dict(), deps=current, arch=args.arch,
                      metrics=metrics)
        narrow_model, info = convert_model(trained, args.arch, graph, clusters, val, LOGIT_BATCHES, spec.num_classes)
        if narrow_model.deps != target:
            raise RuntimeError(f"converted deps {narrow_model.deps} differ from the target {target}")
        narrow_metrics = evaluate(narrow_model, val, ctx.device)
        info.update(trained_top1=metrics["top1"], converted_top1=narrow_metrics["top1"],
                    max_deviation=hook.deviation())
        lines = [f"converted: top1 {narrow_metrics['top1']:.2f} top5 {narrow_metrics['top5']:.2f} "
                 f"(trained full-width: top1 {metrics['top1']:.2f})", *info["lines"],
                 "max within-cluster deviation at the end: "
                 + ", ".join(f"{k} {v:.3g}" for k, v in info["max_deviation"].items())]
        for line in lines:
            trainer.log.log(line)
        if ctx.is_main:
            save_hdf5(pruned_path, narrow_model.state_dict(), deps=narrow_model.deps, arch=args.arch,
                      metrics=narrow_metrics, conversion={k: v for k, v in info.items() if k != "lines"})
            trainer.log.log(f"wrote {pruned_path}")
        return {"clusters": clusters, "metrics": metrics, "base_metrics": base_metrics,
                "narrow_metrics": narrow_metrics, "conversion": info, "model": trained, "narrow_model": narrow_model}
    finally:
        dist.cleanup()


def main(argv=None):
    run(parse(argv))
    return 0


if __name__ == "__main__":
    run_main(main)
