"""Prune a network of your own: a small CNN with a depthwise block, a squeeze-excite gate and a residual sum,
trained on the CIFAR-10 images embedded in the repository (cifar10-mini), then pruned to half its MACs by ResRep
and by L1 + fine-tune, each conversion proven exact.

    python docs/examples/prune_custom_net.py                 # about 4 minutes on 2 CPU cores
    python docs/examples/prune_custom_net.py --epochs 1      # a quick look
"""
if not __package__:  # run as a file: the repository root goes on the path, as with the commands
    import os
    import sys
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import argparse
import os

import torch
from torch import nn

from utils.custom import prune
from utils.training.data import MINI_ARCHIVE, cifar_from_archive, normalize_cifar


def conv_bn(cin, cout, k=3, stride=1, groups=1):
    return nn.Sequential(nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout),
                         nn.SiLU())


class SqueezeExcite(nn.Module):
    def __init__(self, width, inner):
        super().__init__()
        self.squeeze, self.excite = nn.Conv2d(width, inner, 1), nn.Conv2d(inner, width, 1)

    def forward(self, x):
        s = nn.functional.adaptive_avg_pool2d(x, 1)
        return x * torch.sigmoid(self.excite(torch.relu(self.squeeze(s))))


class TinyNet(nn.Module):
    """stem -> [expand 1x1, depthwise 3x3, squeeze-excite, project 1x1] + residual -> downsample -> linear."""

    def __init__(self, num_classes=10):
        super().__init__()
        self.stem = conv_bn(3, 32)
        self.expand, self.depthwise = conv_bn(32, 96, 1), conv_bn(96, 96, 3, groups=96)
        self.se = SqueezeExcite(96, 24)
        self.project = nn.Sequential(nn.Conv2d(96, 32, 1, bias=False), nn.BatchNorm2d(32))
        self.down = conv_bn(32, 64, 3, stride=2)
        self.head = nn.Linear(64, num_classes)

    def forward(self, x):
        x = self.stem(x)
        x = x + self.project(self.se(self.depthwise(self.expand(x))))
        x = self.down(x)
        return self.head(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--epochs", type=int, default=5, help="epochs of training, and of each method (default 5)")
    p.add_argument("--out", default="custom_runs", help="output folder (default custom_runs)")
    args = p.parse_args(argv)
    (tx, ty), (vx, vy), _ = cifar_from_archive(MINI_ARCHIVE, show=False)
    train, val = (normalize_cifar(tx), ty), (normalize_cifar(vx), vy)
    torch.manual_seed(0)
    epochs = ["--epochs", str(args.epochs), "--lr", "0.05", "--batch-size", "64"]
    base = prune("base", TinyNet(), train, val, epochs, os.path.join(args.out, "base"))
    for method in ("resrep", "l1"):
        run = prune(method, base.model, train, val, [*epochs, "--macs-target", "0.5"], os.path.join(args.out, method))
        info = run.conversion.info
        print(f"{method}: {type(run.conversion.model).__name__} with deps {run.conversion.deps}; "
              f"MACs {info['macs_ratio']:.1%} of the base; top-1 {run.metrics['top1']:.2f} on "
              f"{run.metrics['samples']} test images; max logit difference {info['max_logit_diff']:.2g}")


if __name__ == "__main__":
    main()
