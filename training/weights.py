"""Read a full state dict from any of the forms a run produces.

- a file: ``*.safetensors`` (safetensors) or ``*.bin`` / ``*.pt`` / ``*.pth`` (torch.load, weights_only);
- a folder with ``model.safetensors`` / ``pytorch_model.bin`` or their ``*.index.json`` shards (the
  output of ``zero_to_fp32.py``);
- a DeepSpeed checkpoint folder (with ``latest``) or one of its tag folders: ZeRO-2/3 ones consolidated to
  fp32 with ``deepspeed.utils.zero_to_fp32.get_fp32_state_dict_from_zero_checkpoint``, stage-0 ones read
  from their model-states file.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file
from torch import nn

from .checkpoint import LATEST, resolve_checkpoint

NUMPY_ARRAY_GLOBALS = [
    np._core.multiarray._reconstruct,
    np.ndarray,
    np.dtype,
    *{type(np.dtype(t)) for t in (np.uint32, np.int64, np.float64)},
]

logger = logging.getLogger(__name__)

SINGLE_FILES = ("model.safetensors", "pytorch_model.bin")
INDEX_FILES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")


def _load_file(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        return load_file(str(path))
    if path.suffix in (".bin", ".pt", ".pth"):
        return torch.load(path, map_location="cpu", weights_only=True)
    raise ValueError(f"{path}: unknown weight file type; expected .safetensors, .bin, .pt or .pth")


def is_deepspeed_checkpoint(path: str | Path) -> bool:
    path = Path(path)
    return (path / LATEST).is_file() or (path.is_dir() and any(path.glob("*model_states.pt")))


def load_state_dict_any(path: str | Path) -> dict[str, torch.Tensor]:
    """The state dict stored at ``path`` (see the module docstring), on the CPU."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist: pass a weight file, a zero_to_fp32 output folder or a DeepSpeed checkpoint folder")
    if path.is_file():
        logger.info("loading weights from the file %s", path)
        return _load_file(path)
    if is_deepspeed_checkpoint(path):
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

        ckpt_dir, tag = resolve_checkpoint(path)
        if not any((ckpt_dir / tag).glob("zero_pp_rank_*")):
            # ZeRO stage 0: the module's state dict is stored whole.
            logger.info("loading the stage-0 DeepSpeed checkpoint %s (tag %s)", ckpt_dir, tag)
            # The client state holds numpy RNG states: allow exactly the numpy array types, nothing else.
            with torch.serialization.safe_globals(NUMPY_ARRAY_GLOBALS):
                states = torch.load(ckpt_dir / tag / "mp_rank_00_model_states.pt", map_location="cpu", weights_only=True)
            return {k: v.float() if v.is_floating_point() else v for k, v in states["module"].items()}
        logger.info("consolidating the DeepSpeed checkpoint %s (tag %s) to fp32", ckpt_dir, tag)
        return {k: v.detach() for k, v in get_fp32_state_dict_from_zero_checkpoint(str(ckpt_dir), tag=tag).items()}
    for name in SINGLE_FILES:
        if (path / name).is_file():
            logger.info("loading weights from %s", path / name)
            return _load_file(path / name)
    for name in INDEX_FILES:
        if (path / name).is_file():
            shards = sorted(set(json.loads((path / name).read_text())["weight_map"].values()))
            logger.info("loading weights from %d shards listed in %s", len(shards), path / name)
            state: dict[str, torch.Tensor] = {}
            for shard in shards:
                state.update(_load_file(path / shard))
            return state
    raise FileNotFoundError(
        f"{path} holds no weights: expected {SINGLE_FILES}, {INDEX_FILES}, or a DeepSpeed checkpoint ('{LATEST}' or *model_states.pt)"
    )


def load_trained_weights(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Load ``state`` into the rebuilt training model; every key it lacks must be a frozen parameter or a buffer."""
    frozen = {name for name, p in model.named_parameters() if not p.requires_grad}
    buffers = {name for name, _ in model.named_buffers()}
    try:
        result = model.load_state_dict(state, strict=False)
    except RuntimeError as err:
        detail = next((line.strip() for line in str(err).splitlines()[1:] if line.strip()), str(err))
        raise ValueError(
            f"{source} does not fit the rebuilt model ({detail}): the --lora_* flags and --version must be those used in training"
        ) from err
    if result.unexpected_keys:
        raise ValueError(
            f"{source} holds {len(result.unexpected_keys)} keys the rebuilt model lacks (e.g. {result.unexpected_keys[:3]}): "
            "the --lora_* flags and --version must be those used in training"
        )
    trained_missing = [k for k in result.missing_keys if k not in frozen and k not in buffers]
    if trained_missing:
        raise ValueError(
            f"{source} lacks {len(trained_missing)} trained parameters (e.g. {trained_missing[:3]}): "
            "the --lora_* flags and --train_vision_tower / --train_llm / --freeze_pixel_decoder must be those used in training"
        )
    loaded = len(state)
    logger.info("loaded %d tensors from %s; %d frozen tensors kept from the base model", loaded, source, len(result.missing_keys))
