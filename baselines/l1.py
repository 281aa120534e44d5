"""L1 + fine-tune's command line: `python baselines/l1.py -a src56 --ratio 0.5`
(the method: baselines/l1_pruning.py)."""
if not __package__:  # run as a file, not as a module: the repository root goes on the path, as with -m
    import os
    import sys
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from baselines.l1_pruning import L1
from utils.command import run_main
from utils.training.skeleton import run


def main(argv=None):
    run(L1, argv)


if __name__ == "__main__":
    run_main(main)
