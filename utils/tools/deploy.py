"""The deploy form every latency and every ONNX file uses: the network with BN folded into its convs."""
import copy

import torch

from utils.pruning.channel_graph import arch_graph
from utils.pruning.surgery import fuse_bn


def deploy_form(model, arch, num_classes=None):
    """A BN-fused copy (eval only); a model already fused (BN modules gone) is returned as a copy."""
    fused = copy.deepcopy(model).eval()
    if not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in fused.modules()):
        return fused
    return fuse_bn(fused, arch_graph(arch, num_classes))
