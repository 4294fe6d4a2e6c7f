"""Shared test setup: offline, CPU-only environment; the ``slow`` marker; a cheap single-process DeepSpeed."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator

import pytest

# Tests never touch the network (no hub downloads, no Gradio analytics); set before any library import.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "slow: a long-running test (a real training run, an end-to-end check)")


@pytest.fixture(scope="session")
def deepspeed_env() -> Iterator[dict[str, str]]:
    """Make ``deepspeed.initialize`` work in this process as a world of one, without compiling anything.

    Sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT (a free port) for the session and
    skips DeepSpeed's JIT build of its shared-memory all-reduce op (about 50 s; training uses gloo).
    Tests should still use a torch optimizer (``"torch_adam": true``) to avoid compiling FusedAdam.
    Yields the distributed variables it set.
    """
    from training.distributed import free_port

    dist_env = {
        "RANK": "0",
        "WORLD_SIZE": "1",
        "LOCAL_RANK": "0",
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(free_port()),
    }
    with pytest.MonkeyPatch.context() as patch:
        for name, value in dist_env.items():
            patch.setenv(name, value)
        import deepspeed.comm.torch  # noqa: F401  (loads the module patched below)

        # deepspeed.comm re-exports torch, so the module must be reached through sys.modules.
        patch.setattr(sys.modules["deepspeed.comm.torch"], "build_shm_op", lambda: None)
        yield dist_env
