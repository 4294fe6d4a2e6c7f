"""The environment a test gives a child Python process."""

from __future__ import annotations

import os
from pathlib import Path

from training.distributed import RENDEZVOUS_VARS

REPO = Path(__file__).resolve().parent.parent


def child_env(threads: int | None = 1, **extra: str) -> dict[str, str]:
    """This process's environment, offline, with ``threads`` intra-op threads (None: as inherited) and without
    its rendezvous variables.

    The session fixture ``deepspeed_env`` sets MASTER_PORT for this process, whose own process group then
    listens on that port: a child that inherited it would fail to bind (EADDRINUSE) and must pick its own.
    ``extra`` overrides or adds variables.
    """
    env = {k: v for k, v in os.environ.items() if k not in RENDEZVOUS_VARS}
    env.update(HF_HUB_OFFLINE="1", DS_ACCELERATOR="cpu", PYTHONPATH=str(REPO))
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)
    env.update(extra)
    return env
