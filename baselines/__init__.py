"""The baselines a reviewer asks for, at the same MACs and epochs as the four methods (see the README).

l1.py          L1-norm filter pruning, one shot, then fine-tuning (Li et al., ICLR 2017)
scratch.py     the same narrow architecture trained from random initialisation (Liu et al., ICLR 2019)
comparison.py  what the comparison asks of them (and of base+: the base trained as long, not pruned,
               which is train_base_model.py --init)
"""
