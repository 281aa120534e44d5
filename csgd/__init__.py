"""Centripetal SGD: filter clustering, the centripetal update, merging (Ding et al., CVPR 2019; see the README).

clustering.py  k-means (seeded) and even clusters per channel group; residual groups clustered once
centripetal.py CentripetalHook: the gradient rewrite after backward, its param rule, deviation logging
schedule.py    the original's width schedules (src56: all groups 13/16, 11/16, 5/8; sres50: internal 70..30 %)
convert.py     one filter per cluster via utils.surgery.merge, with the logit-difference proof
do_csgd.py     the entry script: one iteration per launch, `python csgd/do_csgd.py -a src56 -i 0`
"""
