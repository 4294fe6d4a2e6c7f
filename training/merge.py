"""Merge a trained LoRA checkpoint into its base model and write a Hugging Face PixelLM folder.

The training model is rebuilt exactly from the settings the checkpoint carries (``run_settings.json``: the
run's ``--version``, LoRA and freeze flags), the trained weights are loaded into it, LoRA is merged
(``merge_and_unload``) and the result is saved with its tokenizer and ``preprocessor_config.json``, so
``PixelLMForCausalLM.from_pretrained`` (and ``train_ds.py --eval_only --version``) loads it. Checkpoints store
only trained parameters; the frozen ones come from ``--version``, and any key the weights lack must be frozen
in training.
"""

from __future__ import annotations

import argparse
import logging
from dataclasses import dataclass, fields
from pathlib import Path

import torch
from peft import PeftModel

from cli import HelpFormatter, add_flags, flag
from model import PixelLMForCausalLM
from model.model_folder import save_model_folder
from model.precision import PRECISIONS, dtype_of

from .args import ModelArgs
from .freeze_policy import TrainScope, prepare_trainable
from .run_settings import resolve_settings
from .weights import load_state_dict_any, load_trained_weights

logger = logging.getLogger(__name__)


@dataclass
class MergeArgs:
    """Flags of ``merge_lora_weights_and_save_hf_model.py``; the model and scope come from the checkpoint."""

    weight: str = flag("", "trained weights: a DeepSpeed checkpoint folder (runs/<exp>/ckpt_model), a zero_to_fp32 output folder, or a .bin/.safetensors file", required=True)
    save_path: str = flag("", "output folder of the merged Hugging Face model", required=True)
    precision: str = flag("bf16", "dtype of the saved weights", choices=sorted(PRECISIONS))


def build_merge_parser(description: str) -> argparse.ArgumentParser:
    """--weight, --save_path, --precision, and the training flags, optional: given ones must agree with the checkpoint."""
    parser = argparse.ArgumentParser(description=description, formatter_class=HelpFormatter)
    add_flags(parser, MergeArgs)
    training = parser.add_argument_group(
        "training flags", "not needed for a checkpoint written by train_ds.py (it carries them); given anyway, they must agree"
    )
    add_flags(training, ModelArgs, optional=True)
    add_flags(training, TrainScope, optional=True)
    return parser


def parse_merge_args(description: str, argv: list[str] | None = None) -> tuple[MergeArgs, dict]:
    """The command line -> (``MergeArgs``, the training flags given explicitly, for ``merge_lora_checkpoint``)."""
    parsed = vars(build_merge_parser(description).parse_args(argv))
    names = {f.name for f in fields(MergeArgs)}
    return MergeArgs(**{k: v for k, v in parsed.items() if k in names}), {k: v for k, v in parsed.items() if k not in names}


def merge_lora_checkpoint(args: MergeArgs, given: dict | None = None) -> Path:
    """Rebuild, load, merge and save; returns the output folder. ``given``: training flags passed explicitly."""
    model_args, scope = resolve_settings(args.weight, given or {})
    model, tokenizer, processor = model_args.load(torch.float32)
    wrapped = prepare_trainable(model, scope)
    load_trained_weights(wrapped, load_state_dict_any(args.weight), args.weight)
    merged = wrapped.merge_and_unload() if isinstance(wrapped, PeftModel) else wrapped
    if not isinstance(merged, PixelLMForCausalLM):
        raise TypeError(f"merging produced a {type(merged).__name__}, expected PixelLMForCausalLM")
    merged.requires_grad_(False)
    merged.to(dtype_of(args.precision))
    out = save_model_folder(merged, tokenizer, processor, args.save_path)
    logger.info("wrote the merged PixelLM (%s, from %s) to %s", args.precision, model_args.version, out)
    return out
