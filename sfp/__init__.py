"""SFP: soft filter zeroing every epoch (He et al., IJCAI 2018; see docs/METHODS.md).

zeroing.py     SoftFilterZeroing: rank each group's filters by L2 norm, zero the weakest, every --epoch-prune epochs
convert.py     the decision: keep the channels not zeroed at the end (surgery.keep)
flops.py       SFP's own idealised CIFAR FLOPs formula, to set beside the paper's column
method.py      SFP, the registered Method: recipes, flags (--rate or --macs-target, solved into the keep rate), the
               zeroing as its hook, the decision, the comparison's budgets
do_sfp.py      the entry script: `python sfp/do_sfp.py -a src56`
"""
