"""Model folders on disk: read a folder's config and weights, tell its layout, write a PixelLM folder so that it
is never half-written."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from .configuration_pixellm import PixelLMConfig
from .processing_pixellm import PixelLMImageProcessor

WEIGHT_INDEX_FILES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
LLAVA_V1_MODEL_TYPES = ("llava", "llava_llama", "llama")


def read_config(folder: str | os.PathLike) -> dict:
    """``folder/config.json`` as a dict; a clear error when it is missing."""
    path = Path(folder) / "config.json"
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found: expected a model folder with config.json and its weights: a PixelLM folder (python -m "
            "model.tiny --out DIR writes one, merge_lora_weights_and_save_hf_model.py writes trained ones, "
            "python -m model.convert_pixellm converts a release) or a LLaVA folder"
        )
    with open(path) as f:
        return json.load(f)


def weight_files(folder: str | os.PathLike) -> list[Path]:
    """The weight files of a Hugging Face folder: sharded (``*.index.json``) or single, safetensors or ``.bin``."""
    folder = Path(folder)
    for index_name in WEIGHT_INDEX_FILES:
        index = folder / index_name
        if index.is_file():
            with open(index) as f:
                shards = sorted(set(json.load(f)["weight_map"].values()))
            missing = [s for s in shards if not (folder / s).is_file()]
            if missing:
                raise FileNotFoundError(f"{index} lists shards that are not in {folder}: {missing}")
            return [folder / s for s in shards]
    for name in WEIGHT_FILES:
        if (folder / name).is_file():
            return [folder / name]
    raise FileNotFoundError(
        f"no weights in {folder}: expected one of {', '.join(WEIGHT_INDEX_FILES + WEIGHT_FILES)}"
    )


def iter_checkpoint(folder: str | os.PathLike) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield (key, tensor) for every tensor of the folder's weights, one shard in memory at a time."""
    from safetensors import safe_open

    for file in weight_files(folder):
        if file.suffix == ".safetensors":
            with safe_open(str(file), framework="pt") as f:
                for key in f.keys():
                    yield key, f.get_tensor(key)
        else:
            state = torch.load(file, map_location="cpu", weights_only=True, mmap=True)
            yield from state.items()
            del state


def detect_layout(folder: str | os.PathLike, config: dict) -> str:
    """'pixellm', 'llava_v1' or 'llava_hf' from ``config`` (``folder``'s config.json); a clear error for anything else."""
    model_type = config.get("model_type")
    path = Path(folder) / "config.json"
    if model_type == PixelLMConfig.model_type:
        return "pixellm"
    if model_type == "llava" and "text_config" in config and "vision_config" in config:
        return "llava_hf"
    if model_type in LLAVA_V1_MODEL_TYPES and "hidden_size" in config:
        if "train_mask_decoder" in config or "out_dim" in config:
            raise ValueError(
                f"{path} is the original PixelLM's merged hf_model folder. Convert it first: python -m model.convert_pixellm "
                f"--src {folder} --clip CLIP_336_FOLDER --out OUT, then pass OUT"
            )
        return "llava_v1"
    raise ValueError(
        f"{path} has model_type {model_type!r} and keys {sorted(config)[:12]}...: expected model_type 'pixellm' (a PixelLM "
        "folder), 'llava' with text_config and vision_config (llava-hf), or 'llava'/'llava_llama'/'llama' with the LLaMA "
        "fields at the top level (original LLaVA, CLIP given by --vision-tower)"
    )


def current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def staged_folder(out: str | os.PathLike) -> Iterator[Path]:
    """Yield a scratch folder next to ``out``; on success give its files the ordinary permissions (0666 and
    0777 less the umask: the safetensors writer creates files readable by their owner only) and move it into
    place, replacing ``out``. On error the scratch folder is removed and ``out`` is left as it was."""
    out = Path(out)
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    mask = current_umask()
    for path in [tmp, *tmp.rglob("*")]:
        path.chmod((0o777 if path.is_dir() else 0o666) & ~mask)
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)


def save_model_folder(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, processor: PixelLMImageProcessor, out: str | os.PathLike
) -> Path:
    """Write a complete model folder at ``out`` through ``staged_folder``."""
    with staged_folder(out) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        processor.save_pretrained(tmp)
    return Path(out)


__all__ = ["detect_layout", "iter_checkpoint", "read_config", "save_model_folder", "staged_folder", "weight_files"]
