"""Centripetal SGD: filter clustering, the centripetal update, merging (Ding et al., CVPR 2019; see the README).

clustering.py  k-means (seeded) and even clusters per channel group; residual groups clustered once
centripetal.py CentripetalHook: the gradient rewrite after backward, its param rule, deviation logging
schedule.py    the original's width schedules (src56: all groups 13/16, 11/16, 5/8; sres50: internal 70..30 %),
               and which file each iteration starts from
convert.py     the decision: one filter per cluster (surgery.merge); the reference has each cluster averaged
comparison.py  what the comparison asks of C-SGD: the width ratio nearest a MACs target, its demo flags
do_csgd.py     the entry script: one iteration per launch, `python csgd/do_csgd.py -a src56 -i 0`
"""
