"""Merge a trained LoRA checkpoint into its base model and write a Hugging Face PixelLM folder.

The training model is rebuilt exactly (``load_base_model`` + ``prepare_trainable`` with the same LoRA
flags), the trained weights are loaded into it, LoRA is merged (``merge_and_unload``) and the result is
saved with its tokenizer and ``preprocessor_config.json``, so ``PixelLMForCausalLM.from_pretrained``
(and ``train_ds.py --eval_only --version``) loads it. Checkpoints store only trained parameters; the
frozen ones come from ``--version``, and any key the weights lack must be frozen in training.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from peft import PeftModel
from torch import nn

from model import PixelLMForCausalLM
from model.model_folder import save_model_folder
from model.precision import PRECISIONS, dtype_of

from .args import flag
from .lora import LoraSettings, prepare_trainable
from .model_setup import load_base_model
from .weights import load_state_dict_any

logger = logging.getLogger(__name__)


@dataclass
class MergeArgs:
    """Flags of ``merge_lora_weights_and_save_hf_model.py`` (model and LoRA flags as in ``train_ds.py``)."""

    version: str = flag("", "the PixelLM folder training started from (train_ds.py --version)", required=True)
    weight: str = flag("", "trained weights: a DeepSpeed checkpoint folder (runs/<exp>/ckpt_model), a zero_to_fp32 output folder, or a .bin/.safetensors file", required=True)
    save_path: str = flag("", "output folder of the merged Hugging Face model", required=True)
    vision_tower: str | None = flag(None, "CLIP folder, only for a LLaVA-style --version", flag="--vision-tower")
    seg_token_num: int | None = flag(None, "as in training (default: the folder's)")
    image_feature_scale_num: int | None = flag(None, "as in training (default: the folder's)")
    ce_loss_weight: float | None = flag(None, "stored in the merged config (default: the folder's)")
    dice_loss_weight: float | None = flag(None, "stored in the merged config (default: the folder's)")
    bce_loss_weight: float | None = flag(None, "stored in the merged config (default: the folder's)")
    lora_r: int = flag(8, "LoRA rank used in training (0: no LoRA)")
    lora_alpha: int = flag(16, "LoRA alpha used in training")
    lora_dropout: float = flag(0.05, "LoRA dropout used in training")
    lora_target_modules: str = flag("q_proj,v_proj", "LoRA target modules used in training")
    train_vision_tower: bool = flag(False, "set when training used --train_vision_tower")
    train_llm: bool = flag(False, "set when training used --train_llm")
    freeze_pixel_decoder: bool = flag(False, "set when training used --freeze_pixel_decoder")
    precision: str = flag("bf16", "dtype of the saved weights", choices=sorted(PRECISIONS))

    def lora(self) -> LoraSettings:
        targets = tuple(name.strip() for name in self.lora_target_modules.split(",") if name.strip())
        return LoraSettings(self.lora_r, self.lora_alpha, self.lora_dropout, targets, self.train_vision_tower, self.train_llm, self.freeze_pixel_decoder)


def load_trained_weights(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Load ``state`` into the rebuilt training model; every key it lacks must be a frozen parameter or a buffer."""
    frozen = {name for name, p in model.named_parameters() if not p.requires_grad}
    buffers = {name for name, _ in model.named_buffers()}
    try:
        result = model.load_state_dict(state, strict=False)
    except RuntimeError as err:
        detail = next((line.strip() for line in str(err).splitlines()[1:] if line.strip()), str(err))
        raise ValueError(
            f"{source} does not fit the rebuilt model ({detail}): pass the --lora_r / --lora_target_modules and --version used in training"
        ) from err
    if result.unexpected_keys:
        raise ValueError(
            f"{source} holds {len(result.unexpected_keys)} keys the rebuilt model lacks (e.g. {result.unexpected_keys[:3]}): "
            "pass the --lora_* flags and --version used in training"
        )
    trained_missing = [k for k in result.missing_keys if k not in frozen and k not in buffers]
    if trained_missing:
        raise ValueError(
            f"{source} lacks {len(trained_missing)} trained parameters (e.g. {trained_missing[:3]}): "
            "pass the --lora_* flags and --train_vision_tower / --train_llm / --freeze_pixel_decoder used in training"
        )
    loaded = len(state)
    logger.info("loaded %d tensors from %s; %d frozen tensors kept from the base model", loaded, source, len(result.missing_keys))


def merge_lora_checkpoint(args: MergeArgs) -> Path:
    """Rebuild, load, merge and save; returns the output folder."""
    model, tokenizer, processor = load_base_model(dataclasses.replace(args, precision="fp32"))
    wrapped = prepare_trainable(model, args.lora())
    load_trained_weights(wrapped, load_state_dict_any(args.weight), args.weight)
    merged = wrapped.merge_and_unload() if isinstance(wrapped, PeftModel) else wrapped
    if not isinstance(merged, PixelLMForCausalLM):
        raise TypeError(f"merging produced a {type(merged).__name__}, expected PixelLMForCausalLM")
    merged.requires_grad_(False)
    merged.to(dtype_of(args.precision))
    out = save_model_folder(merged, tokenizer, processor, args.save_path)
    logger.info("wrote the merged PixelLM (%s) to %s", args.precision, out)
    return out
