"""ResRep's decision: drop the masked compactor rows and fold each compactor into its conv (through the
surgery module), giving the plain conv+BN network of the same arch with narrower deps.

Pruning follows the masks, not a norm threshold as the original did: the largest norm among the pruned
rows is reported, with a warning when it is not small (the run ended before the masked rows had decayed,
so the narrow net differs from the trained one by what those rows did). The conversion's reference is the
trained net with its masked rows zeroed.
"""
import copy

import torch

from utils.pruning.plan import Plan
from utils.pruning.surgery import fold, narrow
from utils.pruning.zeroing import follower_tensors, zero_rows

SMALL_NORM = 1e-4  # a pruned row with a larger norm still changed the trained net's outputs


def pruned_row_norm(groups):
    """The largest norm among the masked rows (0.0 when nothing is masked)."""
    worst = 0.0
    for pg in groups:
        masked = pg.masked()
        if masked:
            worst = max(worst, float(pg.norms()[masked].max()))
    return worst


def decisions(state, groups):
    """{group id: fold(compactors, kept rows)}, read from a trained state dict (masks and compactor kernels
    inside), so a finish.hdf5 read from disk converts too. `groups` give the compactor paths."""
    out = {}
    for pg in groups:
        masks = [state[f"{path}.mask"] for path in pg.paths.values()]
        kept = (masks[0] != 0).nonzero().flatten().tolist()
        if any(not torch.equal(m, masks[0]) for m in masks[1:]):
            raise ValueError(f"group {pg.id}: the masks of its compactors differ")
        if not kept:
            raise ValueError(f"group {pg.id} ({pg.group.producers[0].conv}): every channel is masked")
        out[pg.id] = fold({conv: state[f"{path}.pwc.weight"] for conv, path in pg.paths.items()}, kept)
    return out


def plain_state(state, groups):
    """The state dict without its compactors (once folded, they are gone)."""
    prefixes = tuple(f"{path}." for pg in groups for path in pg.paths.values())
    return {k: v for k, v in state.items() if not k.startswith(prefixes)}


def convert_state(state, graph, groups):
    """Trained ResRep state dict -> (plain narrow state dict, deps)."""
    return narrow(plain_state(state, groups), graph, decisions(state, groups))


def zero_masked_rows(model, groups):
    """A copy of the trained model with every masked compactor row set to zero, and the rows of those channels in
    the group's followers (a depthwise conv after the compactor, its BN, a squeeze-excite gate): what conversion
    keeps. The followers' rows are zeroed because a depthwise conv's BN turns the compactor's 0 into its bias,
    which no narrow network can keep (docs/DEVIATIONS.md)."""
    twin = copy.deepcopy(model)
    rows = {f"{path}.pwc.weight": pg.masked() for pg in groups for path in pg.paths.values()}
    rows.update({name: pg.masked() for pg in groups for name in follower_tensors(pg.group)})
    zero_rows(twin, rows)
    return twin


def decide(model, groups):
    """The skeleton's Plan: fold by the masks, proven against the net with its masked rows zeroed."""
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    norm = pruned_row_norm(groups)
    lines = [f"converting: {sum(len(pg.masked()) for pg in groups)} masked rows pruned; the largest norm among "
             f"them is {norm:.3g}"]
    if norm > SMALL_NORM:
        lines.append(f"warning: pruned rows with norms up to {norm:.3g} (> {SMALL_NORM:g}) had not decayed, so the "
                     "converted net differs from the trained one (the 'trained vs converted' line below); the "
                     "masked rows vanish only when training runs to the end of the cosine schedule")
    return Plan(decisions(state, groups), zero_masked_rows(model, groups),
                "the trained net with its masked compactor rows zeroed", plain_state(state, groups),
                {"pruned_row_norm": norm}, lines)
