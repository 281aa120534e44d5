"""Centripetal SGD: filter clustering, the centripetal update, merging (Ding et al., CVPR 2019; see docs/METHODS.md).

clustering.py  k-means (seeded) and even clusters per channel group; residual groups clustered once
centripetal.py CentripetalHook: the gradient rewrite after backward, its param rule, deviation logging
schedule.py    the original's width schedules (src56: all groups 13/16, 11/16, 5/8; sres50: internal 70..30 %),
               and which file each iteration starts from (a missing base: trained first by method.py)
convert.py     the decision: one filter per cluster (surgery.merge); the reference has each cluster averaged
method.py      CSGD, the registered Method: recipes, flags (--ratios or --macs-target), clustering as the hook's
               preparation, the decision, the comparison's budgets
do_csgd.py     the entry script: one iteration per launch, `python csgd/do_csgd.py -a src56 -i 0`
"""
