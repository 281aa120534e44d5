"""C-SGD's decision: one filter per cluster (the members' mean), the consumers' inputs summed over the
cluster, residual junctions merged once (utils.pruning.surgery.merge). The conversion's reference is the
trained net with every cluster averaged (surgery.collapse): the merge is exact against it whatever
within-cluster deviation training has left, which the 'trained vs converted' difference shows."""
import copy

from utils.pruning.plan import Plan
from utils.pruning.surgery import collapse, merge


def decide(model, graph, clusters, deviation=None):
    """The skeleton's Plan from {group id: clusters}; `deviation` (the hook's last) goes in the record."""
    decisions = {int(gid): merge(c) for gid, c in clusters.items()}
    averaged = copy.deepcopy(model)
    averaged.load_state_dict(collapse({k: v.detach().cpu() for k, v in model.state_dict().items()}, graph, decisions))
    lines, info = [], {}
    if deviation is not None:
        info["max_deviation"] = deviation
        lines.append("max within-cluster deviation at the end: " + ", ".join(f"{k} {v:.3g}" for k, v in deviation.items()))
    return Plan(decisions, averaged, "the cluster-averaged trained net", info=info, lines=lines)
