"""AOFP: binary-search masking with accumulated damage (Ding et al., ICML 2019; see the README).

search.py      one layer's binary search: search set, halves, accumulated damage, prune or narrow
probe.py       the base-mask gate at each scoring layer and the no-grad ablated pass that measures damage
hook.py        AOFPSearch: every searched group inside the training loop (a residual sum scored at all its
               consumers), staggered, stops at the MACs target
convert.py     the decision: widths rounded to multiples of --round-to, the pruned filters zeroed in the
               trained net, then the rest kept (surgery.keep)
comparison.py  what the comparison asks of AOFP: its demo flags, its fine-tuned net as the final one
do_aofp.py     the entry script: search, convert, fine-tune, `python aofp/do_aofp.py -a vc`
"""
