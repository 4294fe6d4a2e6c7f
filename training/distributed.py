"""Process-group setup for every launch mode: plain ``python``, ``torchrun``, the ``deepspeed`` launcher.

The device always comes from ``deepspeed.get_accelerator()`` (CUDA on GPU machines, the CPU with gloo
elsewhere). A plain ``python train_ds.py`` is a world of one: the rendezvous variables are filled in
here when absent, with a free port.
"""

from __future__ import annotations

import os
import random
import socket
import sys
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist

RENDEZVOUS_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


@dataclass(frozen=True)
class DistInfo:
    """This process's place in the world and its device."""

    rank: int
    local_rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def fill_single_process_env(local_rank_flag: int = -1) -> None:
    """Set RANK/WORLD_SIZE/LOCAL_RANK/MASTER_ADDR/MASTER_PORT for a world of one when no launcher did.

    A launcher sets all five (torchrun) or passes ``--local_rank`` plus the rest (deepspeed); only a
    process started without one, i.e. with no WORLD_SIZE, gets the defaults. Raises when the variables
    are only partly set, which would otherwise hang in the rendezvous.
    """
    present = [name for name in RENDEZVOUS_VARS if name in os.environ]
    if "LOCAL_RANK" not in os.environ and local_rank_flag >= 0:
        os.environ["LOCAL_RANK"] = str(local_rank_flag)
    if "WORLD_SIZE" in os.environ:
        missing = [name for name in RENDEZVOUS_VARS if name not in os.environ]
        if missing:
            raise RuntimeError(f"WORLD_SIZE is set but {missing} are not: launch with torchrun/deepspeed or set all of {RENDEZVOUS_VARS}")
        return
    if present and present != ["LOCAL_RANK"]:
        raise RuntimeError(f"only {present} of {RENDEZVOUS_VARS} are set: set all of them (or none, for one process)")
    os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()))


def skip_cpu_shm_build() -> None:
    """On a CPU accelerator, skip DeepSpeed's ~50 s JIT build of its shared-memory all-reduce op.

    Training all-reduces through gloo; the shm op only serves ``inference_all_reduce``. deepspeed.comm
    re-exports ``torch``, so the module is reached through ``sys.modules``.
    """
    import deepspeed.comm.torch  # noqa: F401  (loads the module patched below)

    sys.modules["deepspeed.comm.torch"].build_shm_op = lambda: None


def init_distributed(local_rank_flag: int = -1) -> DistInfo:
    """Initialise the process group on the accelerator's backend and return this process's DistInfo."""
    import deepspeed
    from deepspeed.accelerator import get_accelerator

    fill_single_process_env(local_rank_flag)
    accelerator = get_accelerator()
    if accelerator.device_name() == "cpu":
        skip_cpu_shm_build()
    if not dist.is_initialized():
        deepspeed.init_distributed(dist_backend=accelerator.communication_backend_name())
    local_rank = int(os.environ["LOCAL_RANK"])
    device = torch.device(accelerator.device_name(local_rank))
    if device.type != "cpu":
        accelerator.set_device(local_rank)
    return DistInfo(rank=dist.get_rank(), local_rank=local_rank, world_size=dist.get_world_size(), device=device)


def seed_everything(seed: int) -> None:
    """Seed python, numpy, torch and the accelerator."""
    from deepspeed.accelerator import get_accelerator

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    get_accelerator().manual_seed_all(seed)


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def all_gather_objects(obj: object) -> list:
    """``obj`` of every rank, in rank order (a one-element list outside torch.distributed)."""
    if not (dist.is_available() and dist.is_initialized()):
        return [obj]
    out: list = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out
