"""Distributed setup from the environment: torchrun, the legacy launcher, or one plain process.

torchrun sets RANK/WORLD_SIZE/LOCAL_RANK; `python -m torch.distributed.launch` also passes
`--local-rank` (or `--local_rank`) on the command line. NCCL on CUDA, gloo on CPU. Every rank
makes the same decisions; only rank 0 writes files or shows progress.
"""
import argparse
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self):
        return self.rank == 0

    @property
    def distributed(self):
        return self.world_size > 1


def add_launcher_args(parser):
    """Accept the legacy launcher's `--local-rank`/`--local_rank`; the environment wins when set."""
    parser.add_argument("--local-rank", "--local_rank", dest="local_rank", type=int, default=None,
                        help=argparse.SUPPRESS)
    return parser


def resolve_device(name):
    if name in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name}: CUDA is not available on this machine; use --device cpu")
    return device


def setup(device="auto", local_rank=None):
    """Initialise the process group when launched with several processes; return the context."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    if local_rank is None:
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = resolve_device(device)
    if dev.type == "cuda":
        dev = torch.device("cuda", local_rank if dev.index is None else dev.index)
        torch.cuda.set_device(dev)
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo",
                                **({"device_id": dev} if dev.type == "cuda" else {}))
    return DistContext(rank, world_size, local_rank, dev)


def cleanup():
    if dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(tensor):
    """Sum a tensor over ranks in place (no-op for one process)."""
    if dist.is_initialized():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def broadcast_object(obj, src=0):
    """Rank `src`'s object on every rank (for decisions made once: clusters, masks, draws)."""
    if not dist.is_initialized():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def barrier():
    if dist.is_initialized():
        dist.barrier()


def broadcast_buffers(model):
    """Rank 0's buffers (BN statistics) on every rank, so that all ranks convert and evaluate one network."""
    if dist.is_initialized():
        for b in model.buffers():
            dist.broadcast(b, 0)
