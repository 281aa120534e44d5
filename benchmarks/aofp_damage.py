"""AOFP's damage t under the two BN modes, on the same ablations of the same trained network.

    python benchmarks/aofp_damage.py base_model/weights/src20_cifar10.hdf5 [--batches 8]   # any trained base

For every searched layer and batch (cifar10-mini training images, unaugmented order), one random half of
the layer's filters is ablated and t = ||Z - Z'||^2 / ||Z||^2 is measured at the scorer in train mode, once
with each pass normalised by its own batch statistics (`own`, the original's and our default) and once
with Z' normalised by Z's statistics (`base`). Prints the ratio t_base / t_own per layer and over all:
the size of the deviation `--bn-mode base` introduces, against a threshold tuned for `own`.
"""
if not __package__:  # run as a file, not as a module: the repository root goes on the path, as with -m
    import os
    import sys
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import statistics

import torch

from aofp.hook import AOFPSearch
from aofp.probe import BN_MODES
from utils.command import ArgumentParser, run_main
from utils.pruning.channel_graph import arch_graph_at
from utils.tools.store import model_from_hdf5
from utils.training.data import make_loaders


def damages(model, graph, images, mode, seed):
    """{layer name: [t per batch]} with a random half of every layer ablated, draws seeded alike per mode."""
    search = AOFPSearch(graph, model.deps, bn_mode=mode).attach(model)
    out = {layer.name: [] for layer in search.layers}
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for x in images:
            for p in search.probes:
                p.layer.restart(0)
                p.drawn, p.t = p.layer.draw(g).float(), None
            model(x)
            for p in search.probes:
                out[p.layer.name].append(float(p.t))
    search.detach()
    return out


def main(argv=None):
    p = ArgumentParser(description=__doc__)
    p.add_argument("file", help="a trained conv+BN hdf5 (e.g. the comparison's base/finish.hdf5)")
    p.add_argument("--batches", type=int, default=8, help="batches of 64 images (default %(default)s)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if not args.batches >= 1:
        raise ValueError(f"--batches {args.batches}: must be at least 1")
    model, arch, deps = model_from_hdf5(args.file, trainable=True)
    graph = arch_graph_at(arch, deps, model.num_classes)
    train, _ = make_loaders("cifar10-mini", None, 64, "cpu", image_size=32, num_classes=model.num_classes)
    images = [x for _, (x, _) in zip(range(args.batches), train.batches())]
    model.train()  # BN normalises with batch statistics, as during AOFP's search
    t = {mode: damages(model, graph, images, mode, args.seed) for mode in BN_MODES}
    ratios = []
    print(f"{arch} from {args.file}: t on {args.batches} batches of 64 cifar10-mini training images, a random half "
          "of each layer ablated (the same draws in both modes)")
    print(f"{'layer':<28} {'t own':>9} {'t base':>9} {'base/own':>9}")
    for name in t["own"]:
        own, base = statistics.mean(t["own"][name]), statistics.mean(t["base"][name])
        ratios += [b / o for b, o in zip(t["base"][name], t["own"][name]) if o > 0]
        print(f"{name:<28} {own:>9.4f} {base:>9.4f} {base / own:>9.3f}")
    print(f"t base / t own over {len(ratios)} ablations: mean {statistics.mean(ratios):.3f}, "
          f"median {statistics.median(ratios):.3f}, min {min(ratios):.3f}, max {max(ratios):.3f}")


if __name__ == "__main__":
    run_main(main)
