"""What a method's decision after training is: the `Plan` the one convert-and-prove step (convert.py) carries out.

Every method returns one: ResRep folds its compactors and drops the masked rows, C-SGD merges its clusters,
AOFP, SFP and L1 keep the channels they did not zero (the per-group `Decision`s of surgery.py), each with the
reference the narrow network must equal.
"""
from dataclasses import dataclass, field
from typing import Callable

from torch import nn


@dataclass
class Plan:
    """A method's decision and the reference its conversion must equal (default: the trained net itself)."""
    decisions: dict  # {group id: utils.pruning.surgery.Decision}
    reference: nn.Module | None = None
    reference_name: str = "the trained net"
    state: dict | None = None  # the trained state to narrow, without what the decisions fold in
    info: dict = field(default_factory=dict)  # more facts for the files' `conversion` attribute
    lines: list = field(default_factory=list)  # more lines for the log, before the proof
    after: Callable | None = None  # (converted net) -> (more info, more lines), after the proof (a speed-up)
