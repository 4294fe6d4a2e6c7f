"""What a run trains: LoRA on the LLM's linear layers, full training of PixelLM's own modules.

After ``prepare_trainable(model, lora)`` the model is a peft ``PeftModel`` (or the bare model with
``r = 0``) in which exactly these parameters require grad:

- LoRA A/B of the target linear layers, matched only inside ``language_model``;
- the LLM's input embeddings and lm_head (the new special tokens must be learnt);
- ``mm_projector``, ``out_mm_projector``, ``image_feature_neck``, ``seg_codebook`` (text_hidden_fcs and
  fusion weights) and ``pixel_decoder``, except the decoder side (``DECODER_SIDE``) with
  ``freeze_pixel_decoder``;
- the CLIP ``vision_tower`` only with ``train_vision_tower``;
- every weight of the LLM with ``train_llm`` (no LoRA then), for an LLM trained from scratch.
"""

from __future__ import annotations

import logging
import re
from collections import OrderedDict
from dataclasses import dataclass

from peft import LoraConfig, PeftModel, get_peft_model
from torch import nn

from model import PixelLMForCausalLM

logger = logging.getLogger(__name__)

FULLY_TRAINED = ("mm_projector", "out_mm_projector", "image_feature_neck", "seg_codebook", "pixel_decoder")
DECODER_SIDE = ("out_mm_projector", "image_feature_neck", "pixel_decoder")
REPORT_GROUPS = ("lora", "embed_tokens", "lm_head", *FULLY_TRAINED, "vision_tower", "language_model")


@dataclass(frozen=True)
class LoraSettings:
    r: int = 8
    alpha: int = 16
    dropout: float = 0.05
    target_modules: tuple[str, ...] = ("q_proj", "v_proj")
    train_vision_tower: bool = False
    train_llm: bool = False
    freeze_pixel_decoder: bool = False


def lora_target_regex(target_modules: tuple[str, ...]) -> str:
    """A peft ``target_modules`` pattern (full match) for the named layers inside ``language_model`` only."""
    names = "|".join(re.escape(name) for name in target_modules)
    return rf"language_model\.(?:.*\.)?(?:{names})"


def base_model_of(model: nn.Module) -> PixelLMForCausalLM:
    """The PixelLMForCausalLM inside a PeftModel or a DeepSpeed engine (or ``model`` itself)."""
    inner = getattr(model, "module", model)
    if isinstance(inner, PeftModel):
        inner = inner.get_base_model()
    if not isinstance(inner, PixelLMForCausalLM):
        raise TypeError(f"expected a PixelLMForCausalLM (possibly wrapped), got {type(inner).__name__}")
    return inner


def prepare_trainable(model: PixelLMForCausalLM, lora: LoraSettings) -> nn.Module:
    """Freeze everything, add LoRA to the LLM, then unfreeze the fully trained modules; returns the model to train."""
    if lora.train_llm and lora.r > 0:
        raise ValueError("train_llm trains the whole LLM and excludes LoRA: set r = 0")
    model.requires_grad_(False)
    wrapped: nn.Module = model
    if lora.r > 0:
        config = LoraConfig(
            r=lora.r,
            lora_alpha=lora.alpha,
            lora_dropout=lora.dropout,
            target_modules=lora_target_regex(lora.target_modules),
            bias="none",
        )
        try:
            wrapped = get_peft_model(model, config)
        except ValueError as err:
            raise ValueError(
                f"LoRA found none of --lora_target_modules {list(lora.target_modules)} inside the LLM "
                f"({type(model.language_model).__name__}): name its linear layers, e.g. q_proj,v_proj"
            ) from err
    base = base_model_of(wrapped)
    base.get_input_embeddings().requires_grad_(True)
    base.get_output_embeddings().requires_grad_(True)
    for name in FULLY_TRAINED:
        getattr(base, name).requires_grad_(not (lora.freeze_pixel_decoder and name in DECODER_SIDE))
    base.vision_tower.requires_grad_(lora.train_vision_tower)
    if lora.train_llm:
        base.language_model.requires_grad_(True)
    return wrapped


def parameter_group(name: str) -> str:
    """The report group of a (possibly peft-prefixed) parameter name."""
    if "lora_" in name:
        return "lora"
    if "embed_tokens" in name:
        return "embed_tokens"
    if "lm_head" in name:
        return "lm_head"
    for group in REPORT_GROUPS:
        if re.search(rf"(^|\.){group}\.", name):
            return group
    return "other"


def trainable_summary(model: nn.Module) -> "OrderedDict[str, tuple[int, int]]":
    """{group: (trainable parameters, all parameters)} in a fixed order, plus a "total" row."""
    counts: dict[str, list[int]] = {}
    for name, param in model.named_parameters():
        row = counts.setdefault(parameter_group(name), [0, 0])
        row[1] += param.numel()
        if param.requires_grad:
            row[0] += param.numel()
    out: OrderedDict[str, tuple[int, int]] = OrderedDict()
    for group in (*REPORT_GROUPS, "other"):
        if group in counts:
            out[group] = tuple(counts[group])
    out["total"] = (sum(c[0] for c in counts.values()), sum(c[1] for c in counts.values()))
    return out


def format_trainable(summary: "OrderedDict[str, tuple[int, int]]") -> str:
    lines = ["trainable parameters per group:"]
    for group, (trainable, total) in summary.items():
        lines.append(f"  {group:<20} {trainable:>14,} / {total:>14,}")
    return "\n".join(lines)
