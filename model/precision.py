"""Precision names of the command lines (``--precision fp32|bf16|fp16``) and their dtypes."""

from __future__ import annotations

import torch

PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def default_precision(device: str | torch.device) -> str:
    """bf16 on CUDA, where it is fast and safe for PixelLM; fp32 elsewhere (CPUs without bf16 units run it slowly)."""
    return "bf16" if torch.device(device).type == "cuda" else "fp32"


def dtype_of(precision: str) -> torch.dtype:
    """The dtype of a precision name; a clear error for an unknown one."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {sorted(PRECISIONS)}, got {precision!r}")
    return PRECISIONS[precision]
