"""The resume checkpoint: everything a killed run needs to continue bitwise where it stopped."""
import os
import random

import numpy as np
import torch

from utils.atomic import atomic_write


class CheckpointError(ValueError):
    """A resume checkpoint that cannot be read or does not belong to this run."""


def rng_state():
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state):
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path, payload):
    """Write atomically: a crash mid-write leaves the previous checkpoint in place."""
    atomic_write(path, lambda tmp: torch.save(payload, tmp))


def load_checkpoint(path):
    try:
        # Our own file, holding RNG states and config objects as well as tensors.
        return torch.load(os.fspath(path), map_location="cpu", weights_only=False)
    except Exception as e:  # torch raises several types for a damaged zip/pickle
        raise CheckpointError(f"{path}: cannot read the resume checkpoint ({type(e).__name__}: {e}); "
                              "delete it to start the run afresh") from None
