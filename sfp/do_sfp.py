"""SFP's command line: `python sfp/do_sfp.py -a src56` (the method itself: sfp/method.py)."""
if not __package__:  # run as a file, not as a module: the repository root goes on the path, as with -m
    import os
    import sys
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from sfp.method import SFP
from utils.command import run_main
from utils.training.skeleton import run


def main(argv=None):
    run(SFP, argv)


if __name__ == "__main__":
    run_main(main)
