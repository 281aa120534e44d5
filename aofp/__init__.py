"""AOFP: binary-search masking with accumulated damage (Ding et al., ICML 2019; see docs/METHODS.md).

search.py      one layer's binary search: search set, halves, accumulated damage, prune or narrow
probe.py       the base-mask gate at each scoring layer and the no-grad ablated pass that measures damage
hook.py        AOFPSearch: every searched group inside the training loop (a residual sum scored at all its
               consumers), staggered, stops at the MACs target
convert.py     the decision: widths rounded to multiples of --round-to, the pruned filters zeroed in the
               trained net, then the rest kept (surgery.keep)
method.py      AOFP, the registered Method: recipes, flags, the search as its hook, the decision, the fine-tune,
               the comparison's budgets (its fine-tuned net is the final one)
do_aofp.py     the entry script: search, convert, fine-tune, `python aofp/do_aofp.py -a vc`
"""
