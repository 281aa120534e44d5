"""AOFP: binary-search masking with accumulated damage (Ding et al., ICML 2019; see the README).

search.py      one layer's binary search: search set, halves, accumulated damage, prune or narrow
probe.py       the base-mask gate at the scoring layer and the no-grad ablated pass that measures damage
hook.py        AOFPSearch: every searched layer inside the training loop, staggered, stops at the MACs target
convert.py     the decision: zero the pruned filters in the trained net, then keep the rest (surgery.keep)
comparison.py  what the comparison asks of AOFP: its demo flags, its fine-tuned net as the final one
do_aofp.py     the entry script: search, convert, fine-tune, `python aofp/do_aofp.py -a vc`
"""
