"""Which filters of a channel group become one: k-means on the flattened kernels, or an even split.

A group's clustering is a list of clusters (lists of channel indices); the narrow group has one
channel per cluster. Residual-tied groups are clustered once, from the kernels of all their convs
side by side (the original used the first conv's kernel alone, so the others had no say), and that
clustering is shared by every conv of the group. Clusters are canonical: members ascending,
clusters ordered by their first member, so equal partitions compare equal. A group read by a grouped conv is
clustered run by run (each conv group's channels alone, into as many clusters each).
"""
import torch

from utils.pruning.conv_groups import runs

METHODS = ("kmeans", "even")
KMEANS_ITERS = 100  # Lloyd iterations at most
KMEANS_TOL = 1e-6  # ...stopping earlier once the inertia improves by less than this fraction
KMEANS_RESTARTS = 1  # k-means++ seedings tried, the lowest inertia wins (sklearn >= 1.4 also uses one)


class ClusteringError(ValueError):
    """A clustering or target width that does not fit its channel group."""


def canonical(clusters):
    return sorted((sorted(int(i) for i in c) for c in clusters), key=lambda c: c[0])


def even_clusters(n, k):
    """Consecutive channels in k runs, the first n % k runs one longer (the paper's even split)."""
    check_target(n, k)
    size, extra = divmod(n, k)
    out, start = [], 0
    for j in range(k):
        stop = start + size + (j < extra)
        out.append(list(range(start, stop)))
        start = stop
    return out


def _plus_plus(x, k, gen):
    """k-means++ seeding; when fewer than k distinct points remain, the lowest unused index is taken."""
    n = x.shape[0]
    centers = [int(torch.randint(n, (1,), generator=gen))]
    d2 = ((x - x[centers[0]]) ** 2).sum(1)
    for _ in range(1, k):
        total = d2.sum()
        if total > 0:
            c = int(torch.multinomial(d2 / total, 1, generator=gen))
        else:
            c = next(i for i in range(n) if i not in centers)
        centers.append(c)
        d2 = torch.minimum(d2, ((x - x[c]) ** 2).sum(1))
    return x[centers].clone()


def _fill_empty(x, labels, centers, k):
    """Give every empty cluster the point farthest from its center among clusters with members to spare."""
    for j in range(k):
        counts = torch.bincount(labels, minlength=k)
        if counts[j] > 0:
            continue
        dist = ((x - centers[labels]) ** 2).sum(1)
        dist[counts[labels] <= 1] = -1  # never empty another cluster
        i = int(dist.argmax())
        labels[i] = j
        centers[j] = x[i]
    return labels


def _assign(x, centers):
    d2 = (x * x).sum(1, keepdim=True) - 2 * x @ centers.T + (centers * centers).sum(1)
    return d2.argmin(1)


def _lloyd(x, centers, k, iters, tol):
    best = float("inf")
    for _ in range(iters):
        labels = _fill_empty(x, _assign(x, centers), centers, k)
        sums = torch.zeros_like(centers).index_add_(0, labels, x)
        centers = sums / torch.bincount(labels, minlength=k).unsqueeze(1).to(x.dtype)
        inertia = ((x - centers[labels]) ** 2).sum().item()
        if best - inertia <= tol * inertia:
            break
        best = inertia
    return labels, inertia


def kmeans(features, k, seed=0, iters=KMEANS_ITERS, restarts=KMEANS_RESTARTS, tol=KMEANS_TOL):
    """Cluster the rows of `features` (n x d) into k non-empty clusters; deterministic for a seed."""
    x = features.detach().reshape(features.shape[0], -1).double().cpu()
    n = x.shape[0]
    check_target(n, k)
    if k == n:
        return [[i] for i in range(n)]
    gen = torch.Generator().manual_seed(seed)
    best = None
    for _ in range(restarts):
        labels, inertia = _lloyd(x, _plus_plus(x, k, gen), k, iters, tol)
        if best is None or inertia < best[1]:
            best = (labels, inertia)
    labels = best[0].tolist()
    return canonical([[i for i in range(n) if labels[i] == j] for j in range(k)])


def check_target(width, target, where="layer"):
    if not isinstance(target, int) or target < 1:
        raise ClusteringError(f"{where}: target width {target!r} must be a positive integer")
    if target > width:
        raise ClusteringError(f"{where}: target width {target} is wider than the layer ({width} channels); "
                              "C-SGD can only narrow a layer")


def check_clusters(clusters, width, where="layer"):
    """Refuse a clustering that is not a partition of range(width) into non-empty clusters."""
    seen = set()
    for j, c in enumerate(clusters):
        if len(c) == 0:
            raise ClusteringError(f"{where}: cluster {j} is empty; every cluster needs at least one filter")
        for i in c:
            if not 0 <= int(i) < width:
                raise ClusteringError(f"{where}: channel {i} in cluster {j} is out of range 0..{width - 1}")
            if int(i) in seen:
                raise ClusteringError(f"{where}: channel {i} is in two clusters")
            seen.add(int(i))
    if len(seen) != width:
        missing = sorted(set(range(width)) - seen)
        raise ClusteringError(f"{where}: channels {missing[:8]} are in no cluster")


def group_features(state, group):
    """The rows to cluster: every producer's flattened kernel, side by side (n x sum of fan-ins)."""
    return torch.cat([state[f"{p.conv}.weight"].reshape(group.width, -1).double() for p in group.producers], 1)


def cluster_groups(state, graph, targets, method="kmeans", seed=0):
    """{group id: clusters} for {group id: target width}; groups already at their target are left out."""
    if method not in METHODS:
        raise ClusteringError(f"unknown clustering method {method!r}: choose one of {', '.join(METHODS)}")
    out = {}
    for gid, target in sorted(targets.items()):
        group = graph.groups[gid]
        where = f"group {gid} ({group.producers[0].conv}, {group.role})"
        check_target(group.width, target, where)
        if target == group.width:
            continue
        if target % group.conv_groups:
            raise ClusteringError(f"{where}: target width {target} is not a multiple of its {group.conv_groups} "
                                  "conv groups (a grouped conv reads it)")
        clusters, features = [], group_features(state, group)
        # a grouped conv's group: each run is clustered alone, into as many clusters (utils/pruning/conv_groups.py)
        for run in runs(group):
            k = target // group.conv_groups
            if method == "even":
                found = even_clusters(len(run), k)
            else:
                # Each group (and run) gets its own stream, so adding one does not change the others' clusters.
                found = kmeans(features[run.start:run.stop], k, seed=seed * 100003 + gid + 7919 * run.start)
            clusters += [[run.start + i for i in c] for c in found]
        clusters = canonical(clusters)
        check_clusters(clusters, group.width, where)
        if len(clusters) != target:
            raise ClusteringError(f"{where}: got {len(clusters)} clusters for target {target}")
        out[gid] = clusters
    return out
