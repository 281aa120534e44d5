"""The baselines a reviewer asks for, at the same MACs and epochs as the four methods (docs/COMPARISON.md), and
plain training, registered like the methods (utils/registry.py).

plain.py         BASE, plain training (train_base_model.py), and BASE_PLUS: the base trained a method's epochs more
l1_pruning.py    L1: L1-norm filter pruning, one shot, then fine-tuning (Li et al., ICLR 2017)
from_scratch.py  SCRATCH: the same narrow architecture trained from random initialisation (Liu et al., ICLR 2019)
l1.py, scratch.py  their entry scripts
"""
