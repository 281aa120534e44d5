"""SFP's own idealised FLOPs for CIFAR ResNets (he-y/soft-filter-pruning utils/cifar_resnet_flop.py),
so that a run can be set beside the paper's FLOPs column.

It is not the cost of our small model. It describes the *option-A* ResNet of the paper (zero-pad
shortcuts: no projection convs; our src nets are option B), counts conv MACs only (no FC), keeps a
block's input at full width (the residual stream is not narrowed, except that the first block reads
the pruned stem) and uses the ideal keep ratio r, where the masks floor the number pruned. For the
floored counts pass `floored=True`. Check: ResNet-56 at r = 0.6 gives 52.63 % fewer FLOPs.

    python -m sfp.flops --depth 56 --rate 0.6
"""

from utils.command import ArgumentParser, run_main

CHANNELS, WIDTHS = (16, 32, 64), (32, 16, 8)


def stage_rates(rate, floored=False):
    """Keep ratio per stage: r, or (C - int(C*(1-r))) / C when the pruned count is floored."""
    if not floored:
        return (rate,) * 3
    return tuple((c - int(c * (1 - rate))) / c for c in CHANNELS)


def sfp_cifar_flops(depth, rate=1.0, floored=False):
    """The original formula: conv MACs of an option-A CIFAR ResNet-`depth` at keep ratio `rate`."""
    if (depth - 2) % 6:
        raise ValueError(f"depth {depth}: a CIFAR ResNet has depth 6n+2 (20, 32, 56, 110)")
    r = stage_rates(rate, floored)
    per_stage = (depth - 2) // 3  # convs per stage, two per block
    flops = CHANNELS[0] * WIDTHS[0] ** 2 * 9 * 3 * r[0]  # the stem
    for s in range(3):
        c, w = CHANNELS[s], WIDTHS[s]
        for k in range(per_stage):
            first_conv_of_block = k % 2 == 0
            if s == 0 and k < 2:  # the first block reads the pruned stem: both convs are r^2
                flops += c * w * w * 9 * c * r[0] ** 2
            elif first_conv_of_block:  # the block's input is the full residual stream
                flops += c * w * w * 9 * c * r[s]
            else:
                flops += c * w * w * 9 * c * r[s] ** 2
        if s > 0:  # the stage's first conv reads the previous, narrower stream
            flops -= c * w * w * 9 * (c - CHANNELS[s - 1]) * r[s]
    return flops


def sfp_cifar_reduction(depth, rate, floored=False):
    """Fraction of FLOPs removed, by the original formula."""
    return 1 - sfp_cifar_flops(depth, rate, floored) / sfp_cifar_flops(depth, 1.0)


def depth_of(arch):
    """The depth of a CIFAR ResNet arch name (src56 -> 56), or None for other archs."""
    return int(arch[3:]) if arch.startswith("src") and arch[3:].isdigit() else None


def main(argv=None):
    p = ArgumentParser(description=__doc__)
    p.add_argument("--depth", type=int, default=56)
    p.add_argument("--rate", type=float, default=0.7, help="keep ratio")
    args = p.parse_args(argv)
    base = sfp_cifar_flops(args.depth)
    for floored in (False, True):
        f = sfp_cifar_flops(args.depth, args.rate, floored)
        print(f"ResNet-{args.depth} (option A) rate {args.rate}{' floored' if floored else ''}: "
              f"{f:.4g} of {base:.4g} MACs, {1 - f / base:.2%} fewer")


if __name__ == "__main__":
    run_main(main)
