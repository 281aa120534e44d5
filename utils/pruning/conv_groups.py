"""Channel groups read by a grouped conv (ResNeXt, RegNet): the same count of channels pruned in every conv group.

A grouped conv with G conv groups that reads and writes a channel group cuts it into G runs of width / G
consecutive channels: run j is read and written by conv group j alone. The narrow conv is again a torch conv of
G equal conv groups only if every run keeps the same count of channels; and two channels can be merged (C-SGD)
only within a run, since the conv's rows in two runs read different inputs. Every method's widths go through
`step` and its choices through `first_per_run` or `runs`, so that with G = 1 (every other group) nothing
changes.
"""
import math


def step(group, round_to=1):
    """The multiple every kept width of `group` must be: `--round-to` N and its conv groups G (their lcm)."""
    return math.lcm(int(round_to), group.conv_groups)


def runs(group):
    """The channels of each conv group's run: [range(0, w/G), range(w/G, 2w/G), ...]; one run when G = 1."""
    size = group.width // group.conv_groups
    return [range(j * size, (j + 1) * size) for j in range(group.conv_groups)]


def first_per_run(order, count, group):
    """The first count / G channels of every run met in `order` (a ranking of the group's channels), in the order
    met: exactly order[:count] when G = 1. `count` must be a multiple of G (see `step`)."""
    if count % group.conv_groups:
        raise ValueError(f"group {group.id} ({group.producers[0].conv}): {count} channels cannot be taken evenly "
                         f"from its {group.conv_groups} conv groups; use a multiple of {group.conv_groups}")
    return take_per_run(order, count, group.width, group.conv_groups)


def take_per_run(order, count, width, conv_groups):
    """first_per_run for a group of `width` channels in `conv_groups` runs (order[:count] when it is 1)."""
    order = [int(i) for i in order]
    if conv_groups == 1:
        return order[:count]
    size, quota, taken, out = width // conv_groups, count // conv_groups, [0] * conv_groups, []
    for i in order:
        if taken[i // size] < quota:
            taken[i // size] += 1
            out.append(i)
    return out


def misfit(clusters, group):
    """Why `clusters` (one narrow channel each) do not fit the group's conv groups, or None when they do."""
    g = group.conv_groups
    if g == 1:
        return None
    size, per_run = group.width // g, [0] * g
    for c in clusters:
        run = {int(i) // size for i in c}
        if len(run) > 1:
            return f"cluster {sorted(c)} spans conv groups {sorted(run)} (runs of {size} channels)"
        per_run[run.pop()] += 1
    if len(set(per_run)) > 1:
        return f"it keeps {per_run} channels in its {g} conv groups (runs of {size}); each must keep the same count"
    return None
