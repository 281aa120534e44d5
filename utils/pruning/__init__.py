"""The pruning core: channel graph, surgery, zeroing, FLOPs, the proof and the convert-and-prove step.
Works on any nn.Module whose channels the graph can follow; imports nothing from training or tools. Importing it
registers the torchvision archs (tv:NAME), whose widths the channel graph resolves."""
from . import torchvision_models  # noqa: F401
