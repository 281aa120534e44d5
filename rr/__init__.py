"""ResRep: compactors, gradient resetting, mask selection, conversion (Ding et al., ICCV 2021; see docs/METHODS.md).

compactor.py   identity 1x1 compactors after the BN of every pruned group's convs; their optimizer rule
resrep.py      ResRepHook: gradient resetting after backward, mask updates every --mask-interval steps
masks.py       the global mask walk by row norm, with incremental MACs, to the --macs-target (or predicted
               latency, to the --latency-target)
convert.py     the decision: fold each compactor, drop the masked rows; the reference has them zeroed
latency_target.py  --latency-target: the per-layer table the walk charges, predicted and measured speed-up
method.py      RESREP, the registered Method: its recipes, flags, validation, hooks, decision, comparison budgets
exp_resrep.py  the entry script: `python rr/exp_resrep.py -a src56`
"""
