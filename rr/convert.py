"""ResRep's conversion: drop the masked compactor rows, fold each compactor into its conv (through the
surgery module), and get the plain conv+BN network of the same arch with narrower deps.

Pruning follows the masks, not a norm threshold as the original did: the largest norm among the
pruned rows is reported, and a warning says when it is not small (the run ended before the
masked rows had decayed, so the narrow net differs from the trained one by what those rows did).
The exactness check compares the converted net with the trained one whose masked rows are zeroed.
"""
import copy

import torch

from utils.surgery import fold, narrow

SMALL_NORM = 1e-4  # a pruned row with a larger norm still changed the trained net's outputs


def pruned_row_norm(groups):
    """The largest norm among the masked rows (0.0 when nothing is masked)."""
    worst = 0.0
    for pg in groups:
        masked = pg.masked()
        if masked:
            worst = max(worst, float(pg.norms()[masked].max()))
    return worst


def convert_state(state, graph, groups):
    """Trained ResRep state dict (compactors and masks inside) -> (plain narrow state dict, deps).

    `groups` are the PrunedGroups (only their compactor paths are used): masks and compactor kernels
    are read from `state`, so this also converts a finish.hdf5 read from disk.
    """
    decisions = {}
    for pg in groups:
        masks = [state[f"{path}.mask"] for path in pg.paths.values()]
        kept = (masks[0] != 0).nonzero().flatten().tolist()
        if any(not torch.equal(m, masks[0]) for m in masks[1:]):
            raise ValueError(f"group {pg.id}: the masks of its compactors differ")
        if not kept:
            raise ValueError(f"group {pg.id} ({pg.group.producers[0].conv}): every channel is masked")
        decisions[pg.id] = fold({conv: state[f"{path}.pwc.weight"] for conv, path in pg.paths.items()}, kept)
    out, deps = narrow(state, graph, decisions)
    prefixes = tuple(f"{path}." for pg in groups for path in pg.paths.values())
    return {k: v for k, v in out.items() if not k.startswith(prefixes)}, deps


def zero_masked_rows(model, groups):
    """A copy of the trained model with every masked compactor row set to zero: what conversion keeps."""
    twin = copy.deepcopy(model)
    modules = dict(twin.named_modules())
    with torch.no_grad():
        for pg in groups:
            for path in pg.paths.values():
                comp = modules[path]
                comp.pwc.weight.mul_(comp.mask.view(-1, 1, 1, 1))
    return twin
