"""What AOFP tells the comparison (compare_methods.py): it stops at a MACs target by itself, then
fine-tunes the narrow net, whose accuracy is the final one."""
from aofp import do_aofp
from utils.tools.compare import Entry

ENTRY = Entry(
    "aofp", "AOFP", "aofp/do_aofp.py", do_aofp.main,
    aim=lambda arch, target, groups, round_to=1: (["--flops-target", f"{target:g}"], None),
    budgets={
        # halves of 10 steps rather than 1000, a half is pruned when its damage is below 0.1; a search of at
        # most 2 epochs (it met the target at step 118 of 156), then 1 of fine-tuning
        "demo": ["--epochs", "2", "--iters-per-half", "10", "--warmup-iters", "10", "--thresh", "0.1",
                 "--ft-epochs", "1"],
        "smoke": ["--epochs", "1", "--max-steps", "40", "--iters-per-half", "1", "--warmup-iters", "0",
                  "--thresh", "1e9", "--ft-epochs", "1", "--ft-max-steps", "2"],
        "study": ["--epochs", "3", "--batch-size", "128", "--iters-per-half", "20", "--warmup-iters", "20",
                  "--thresh", "0.1", "--ft-epochs", "2", "--ft-batch-size", "128"],
    },
    note=lambda conversion, setting: (
        "AOFP: logit diff between the masked net and the pruned narrow net; the search stops once the MACs are "
        "below the target or its epochs run out (then it stays above); *final* is the narrow net after "
        "fine-tuning."),
    final="finetune/finish.hdf5",
    done="finetune/finish.hdf5",
)
