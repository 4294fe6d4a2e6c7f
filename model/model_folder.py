"""Write a PixelLM model folder (weights, config, tokenizer, preprocessor) so that it is never half-written."""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from .processing_pixellm import PixelLMImageProcessor


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


__all__ = ["save_model_folder", "staged_folder"]
