"""C-SGD's command line: `python csgd/do_csgd.py -a src56 -i 0`, then -i 1, -i 2 (the method: csgd/method.py)."""
if not __package__:  # run as a file, not as a module: the repository root goes on the path, as with -m
    import os
    import sys
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from csgd.method import CSGD
from utils.command import run_main
from utils.training.skeleton import run


def main(argv=None):
    run(CSGD, argv)


if __name__ == "__main__":
    run_main(main)
