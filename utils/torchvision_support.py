"""Which torchvision classification models run with which method: the table of docs/TORCHVISION.md, generated.

    python -m utils.torchvision_support                       # print the table
    python -m utils.torchvision_support --write docs/TORCHVISION.md   # replace it between the markers

For every model torchvision lists (and the CIFAR variants): the channel graph's groups by role, or the one line
that refuses the model; its MACs at its input size; and, per method, whether the method finds a group to prune at
its default `--groups` (ResRep: a group whose convs have a BN, where its compactors fold). Which families the
tests run each method on end to end is in tests/test_torchvision.py.
"""
import os
from collections import Counter

from utils.command import ArgumentParser, run_main

BEGIN, END = "<!-- torchvision-support:begin -->", "<!-- torchvision-support:end -->"


def default_groups(name, arch):
    """A method's default `--groups` for `arch` (C-SGD's depends on the arch's data set)."""
    from utils.registry import get_method
    from utils.training import skeleton

    args = skeleton.parse(get_method(name), ["-a", arch])
    if getattr(args, "groups", None):
        return args.groups
    from csgd.schedule import default_schedule

    return default_schedule(arch).groups


def finds_groups(name, graph, groups):
    """Whether method `name` has a group to prune among `groups` (ResRep: one whose convs have a BN)."""
    from rr.compactor import compactor_layout

    if not graph.select(groups):
        return False
    if name == "resrep":
        try:
            compactor_layout(graph, groups)
        except ValueError:
            return False
    return True


def method_cell(name, arch, graph):
    """'yes' (at the method's default --groups), 'with --groups all', or 'no'."""
    if finds_groups(name, graph, default_groups(name, arch)):
        return "yes"
    return "with `--groups all`" if finds_groups(name, graph, "all") else "no group to prune"


def row(model_name, methods):
    """(cells) for one torchvision model."""
    from utils.pruning.channel_graph import UnsupportedOpError, arch_graph
    from utils.pruning.flops import arch_cost

    arch = f"tv:{model_name}"
    try:
        graph = arch_graph(arch)
    except UnsupportedOpError as e:
        reason = str(e).removeprefix("channel graph: ").replace("|", "/")
        return [f"`{arch}`", "refused", "", reason, *["" for _ in methods]]
    roles = Counter(g.role for g in graph.groups)
    found = ", ".join(f"{n} {r}" for r, n in sorted(roles.items()))
    macs = arch_cost(arch)["macs"]
    linears = sum(1 for lc in graph.layers if lc.kind == "linear" and lc.out_group is not None)
    layers = f"{len(graph.convs) - linears} convs" + (f" + {linears} linear{'s' * (linears > 1)}" if linears else "")
    return [f"`{arch}`", layers, f"{macs / 1e6:,.0f} M", found,
            *[method_cell(m, arch, graph) for m in methods]]


def table_methods():
    """The table's method columns: the registered methods, then L1 and scratch."""
    from utils.registry import list_methods

    return [*list_methods(), "l1", "scratch"]


def table():
    from utils.pruning.torchvision_models import available

    methods = table_methods()
    lines = ["| model | deps: layers | MACs | channel groups (or why refused) | " + " | ".join(methods) + " |",
             "|---|---|---|---|" + "---|" * len(methods)]
    for name in available():
        lines.append("| " + " | ".join(row(name, methods)) + " |")
    return "\n".join(lines)


def write(path, text):
    from utils.atomic import write_text

    doc = open(path).read()
    if BEGIN not in doc or END not in doc:
        raise ValueError(f"{path}: no {BEGIN} ... {END} markers to put the table between")
    head, rest = doc.split(BEGIN, 1)
    write_text(path, head + BEGIN + "\n" + text + "\n" + END + rest.split(END, 1)[1])


def main(argv=None):
    p = ArgumentParser(description=__doc__)
    p.add_argument("--write", metavar="FILE", help="replace the table between the markers in FILE")
    args = p.parse_args(argv)
    text = table()
    if args.write:
        write(args.write, text)
        print(f"{text.count(chr(10)) - 1} models -> {os.path.abspath(args.write)}")
    else:
        print(text)


if __name__ == "__main__":
    run_main(main)
