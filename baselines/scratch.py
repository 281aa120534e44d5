"""The from-scratch baseline's command line: `python baselines/scratch.py -a src56 --ratio 0.5`
(the method: baselines/from_scratch.py)."""
if not __package__:  # run as a file, not as a module: the repository root goes on the path, as with -m
    import os
    import sys
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from baselines.from_scratch import SCRATCH
from utils.command import run_main
from utils.training.skeleton import run


def main(argv=None):
    run(SCRATCH, argv)


if __name__ == "__main__":
    run_main(main)
