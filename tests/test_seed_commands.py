"""The original READMEs' commands (../shared/seeds) run verbatim here: each is parsed and checked by the run skeleton
as its script would (every flag, the recipe, the start weights; nothing read or written), under the legacy launcher
too, and each gets the paper's recipe."""
import pytest

from aofp.method import AOFP
from baselines.plain import BASE
from csgd.method import CSGD
from rr.method import RESREP
from utils.training import skeleton

SEED_COMMANDS = [  # (command line as the seeds' READMEs give it, method, start weights, epochs, what else)
    ("python train_base_model.py -a src56", BASE, None, 240, {}),
    ("python train_base_model.py -a vc", BASE, None, 240, {}),
    ("python rr/exp_resrep.py -a src56", RESREP, "src56_train/finish.hdf5", 480, {}),
    ("python -m torch.distributed.launch --nproc_per_node=8 rr/exp_resrep.py -a sres50", RESREP,
     "torchvision_res50.hdf5", 180, {}),
    ("python csgd/do_csgd.py -a src56 -i 0", CSGD, "src56_train/finish.hdf5", 600, {"itr": 0}),
    ("python csgd/do_csgd.py -a src56 -i 1", CSGD, "csgd_models/src56_train/itr0/finish_converted.hdf5", 600,
     {"itr": 1}),
    ("python csgd/do_csgd.py -a src56 -i 2", CSGD, "csgd_models/src56_train/itr1/finish_converted.hdf5", 600,
     {"itr": 2}),
    ("python -m torch.distributed.launch --nproc_per_node=8 csgd/do_csgd.py -a sres50 -i 4", CSGD,
     "csgd_models/sres50_train/itr3/finish_converted.hdf5", 70, {"itr": 4}),
    ("python aofp/do_aofp.py -a src56", AOFP, "src56_train/finish.hdf5", 600, {"macs_target": 0.5}),
    ("python aofp/do_aofp.py -a vc", AOFP, "vc_train/finish.hdf5", 600, {"macs_target": 0.35}),
]
FILES = ["src56_train/finish.hdf5", "vc_train/finish.hdf5", "torchvision_res50.hdf5",
         *[f"csgd_models/src56_train/itr{k}/finish_converted.hdf5" for k in range(2)],
         *[f"csgd_models/sres50_train/itr{k}/finish_converted.hdf5" for k in range(4)]]


@pytest.mark.parametrize("command, method, start, epochs, more", SEED_COMMANDS, ids=[c[0] for c in SEED_COMMANDS])
def test_a_seed_command_is_taken_verbatim(command, method, start, epochs, more, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for path in FILES:  # the files the chain of commands makes before each (only their existence is checked)
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_bytes(b"")
    words = command.split()
    argv = words[words.index(method.script) + 1:]
    if "torch.distributed.launch" in command:
        argv.append("--local-rank=0")  # what the legacy launcher appends for each process
    before = sorted(str(p) for p in tmp_path.rglob("*"))
    args, cfg, got = skeleton.check(method, argv)
    assert got == start and cfg.epochs == epochs
    assert all(getattr(args, k) == v for k, v in more.items())
    assert sorted(str(p) for p in tmp_path.rglob("*")) == before  # checked, nothing written


def test_resreps_paper_target_is_its_default():
    args, cfg, _ = skeleton.check(RESREP, ["-a", "src56", "--init", __file__])
    assert cfg.batch_size == 64 and cfg.lr == 0.01 and cfg.schedule == "cosine" and args.macs_target is None
    assert RESREP.recipes["cifar10"]["macs_target"] == 0.471 and RESREP.recipes["imagenet"]["macs_target"] == 0.455
