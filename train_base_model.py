"""Train a base model: `python train_base_model.py -a src56` (plain training: baselines/plain.py)."""
from baselines.plain import BASE
from utils.command import run_main
from utils.training.skeleton import run


def main(argv=None):
    run(BASE, argv)


if __name__ == "__main__":
    run_main(main)
