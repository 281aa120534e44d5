"""SFP: soft filter zeroing every epoch (He et al., IJCAI 2018; see the README).

zeroing.py     SoftFilterZeroing: rank each group's filters by L2 norm, zero the weakest, every --epoch-prune epochs
convert.py     the decision: keep the channels not zeroed at the end (surgery.keep)
flops.py       SFP's own idealised CIFAR FLOPs formula, to set beside the paper's column
comparison.py  what the comparison asks of SFP: the keep rate nearest a MACs target, its demo flags
do_sfp.py      the entry script: `python sfp/do_sfp.py -a src56`
"""
