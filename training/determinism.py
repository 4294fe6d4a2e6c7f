"""``--deterministic``: runs of the same seed and flags give bit-identical weights, at any fixed thread count.

Without it, two runs of the same seed differ by float noise on a multi-threaded CPU: the backward pass of
advanced indexing (``features[index]``, which gives each conversation and each target its image's
features) adds the gradients of repeated indices with parallel atomic float adds once a tensor has
32,768 elements or more, and the order of those adds changes from run to run. Adam turns such noise
into weight differences of learning-rate size wherever a gradient is near zero.

``set_deterministic`` switches PyTorch to its deterministic kernels (that indexing backward becomes a
serial loop), makes cuDNN pick deterministic algorithms without benchmarking, gives cuBLAS a fixed
workspace and pins the intra-op thread count (OpenMP and MKL alike) to the one the process started
with. It leaves ``torch.utils.deterministic.fill_uninitialized_memory`` off: that option fills every
``torch.empty`` with NaN, and DeepSpeed ZeRO-2 allocates its two gradient buckets (``reduce_bucket_size``
elements each) with ``torch.empty`` at every micro-step: filling them would dominate the step time
(docs/training.md), and only the part of a bucket that gradients were copied into is read. Seeds and the data order are deterministic in
every run already (``seed_everything``, ``training.data``). Two runs are bit-identical only with the
same number of threads: float sums are split over the threads, so another count sums in another order.
"""

from __future__ import annotations

import logging
import os

import torch

logger = logging.getLogger(__name__)

CUBLAS_WORKSPACE_CONFIG = ":4096:8"


def set_deterministic(device: torch.device) -> int:
    """Make every later PyTorch operation of this process deterministic; returns the intra-op thread count.

    Call it before the first CUDA matrix multiplication (cuBLAS reads ``CUBLAS_WORKSPACE_CONFIG`` when it
    starts). On the CPU an operation without a deterministic kernel raises; on CUDA it only warns, because
    a few that PixelLM uses have none there (the backward pass of bilinear ``F.interpolate``).
    """
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_WORKSPACE_CONFIG)
    torch.use_deterministic_algorithms(True, warn_only=device.type != "cpu")
    torch.utils.deterministic.fill_uninitialized_memory = False
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False
    threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    logger.info("deterministic algorithms on, %d intra-op threads", threads)
    return threads
