"""The deploy form every latency and every ONNX file uses: the network with BN folded into its convs."""
import copy

import torch

from utils.pruning.channel_graph import arch_graph
from utils.pruning.surgery import fuse_bn


def deploy_form(model, arch, num_classes=None):
    """A BN-fused copy (eval only); a model already fused (its convs' BN modules gone) is returned as a copy. A BN
    that is not a conv's own (DenseNet's pre-activation BN) stays: nothing before it to fold into."""
    fused = copy.deepcopy(model).eval()
    graph = arch_graph(arch, num_classes)
    modules = dict(fused.named_modules())
    if not any(isinstance(modules.get(p.bn), torch.nn.modules.batchnorm._BatchNorm)
               for g in graph.groups for p in g.rows() if p.bn):
        return fused
    return fuse_bn(fused, graph)
