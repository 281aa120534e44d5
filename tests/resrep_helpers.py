"""What the ResRep tests share: a model with compactors, perturbed rows, random masks, a probe hook and a
tiny real Trainer."""
import math
import random

import pytest
import torch

from helpers import random_model
from rr.compactor import compactor_rule, insert_compactors
from utils.pruning.channel_graph import arch_graph_at
from utils.training import dist
from utils.training.data import make_loaders
from utils.training.engine import Hook, TrainConfig, Trainer


@pytest.fixture(autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # the CPU is shared; small ops gain nothing from threads
    yield
    torch.set_num_threads(n)


def resrep(arch, seed=0):
    model = random_model(arch, seed=seed)
    graph = arch_graph_at(arch, model.deps)
    return model, graph, insert_compactors(model, graph)


def perturb_compactors(groups, scale=0.3, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for pg in groups:
            for c in pg.compactors():
                w = c.pwc.weight  # rows of norm ~scale added: activations keep their scale through deep nets
                w.add_(torch.randn(w.shape, generator=g) * scale / math.sqrt(w.shape[1]))


def random_masks(groups, fraction=0.4, seed=0):
    rng = random.Random(seed)
    for pg in groups:
        w = pg.group.width
        pg.set_masked(sorted(rng.sample(range(w), rng.randint(0, min(w - 1, int(w * fraction) + 1)))))


class Probe(Hook):
    """Calls back at chosen points of the training loop. Its place in the hook list relative to the
    ResRepHook says what it sees: before it, the state ResRep starts from; after it, what ResRep left."""

    def __init__(self, before_step=None, after_backward=None, after_step=None):
        self.calls = {"before_step": before_step, "after_backward": after_backward, "after_step": after_step}

    def before_step(self, trainer, images, labels):
        if self.calls["before_step"]:
            self.calls["before_step"](trainer, images, labels)

    def after_backward(self, trainer):
        if self.calls["after_backward"]:
            self.calls["after_backward"](trainer)

    def after_step(self, trainer):
        if self.calls["after_step"]:
            self.calls["after_step"](trainer)


def tiny_trainer(model, groups, hooks, tmp_path, steps, batch=8, lr=0.05, image_size=16, ctx=None, rank=0, world=1):
    """A real Trainer on synthetic data, small images (global pooling is adaptive), the compactor rule."""
    cfg = TrainConfig(epochs=1, batch_size=batch, lr=lr, schedule="cosine", max_steps=steps, output=str(tmp_path))
    train, val = make_loaders("synthetic", None, batch, "cpu", rank, world, image_size=image_size, num_classes=10)
    return Trainer(cfg, model, train, val, ctx or dist.DistContext(), hooks=hooks, param_rule=compactor_rule(groups))


def masked_count(groups):
    return sum(len(pg.masked()) for pg in groups)
