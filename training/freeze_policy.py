"""What a run trains (``TrainScope``, the flags) and the freeze policy that applies it (``prepare_trainable``).

After ``prepare_trainable(model, scope)`` the model is a peft ``PeftModel`` (or the bare model with
``lora_r = 0``) in which exactly these parameters require grad:

- LoRA A/B of the target linear layers, matched only inside ``language_model`` (``training.lora``);
- the LLM's input embeddings and lm_head (the new special tokens must be learnt);
- ``mm_projector``, ``out_mm_projector``, ``image_feature_neck``, ``seg_codebook`` (text_hidden_fcs and
  fusion weights) and ``pixel_decoder``, except the decoder side (``DECODER_SIDE``) with
  ``freeze_pixel_decoder``;
- the CLIP ``vision_tower`` only with ``train_vision_tower``;
- every weight of the LLM with ``train_llm`` (no LoRA then), for an LLM trained from scratch.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from dataclasses import dataclass

from torch import nn

from cli import flag
from model import PixelLMForCausalLM
from model.modeling_pixellm import base_model_of

from .lora import add_lora

FULLY_TRAINED = ("mm_projector", "out_mm_projector", "image_feature_neck", "seg_codebook", "pixel_decoder")
DECODER_SIDE = ("out_mm_projector", "image_feature_neck", "pixel_decoder")
REPORT_GROUPS = ("lora", "embed_tokens", "lm_head", *FULLY_TRAINED, "vision_tower", "language_model")


@dataclass
class TrainScope:
    """Which parameters a run trains; stored with its checkpoints, so a merge rebuilds the same model."""

    lora_r: int = flag(8, "LoRA rank (0 disables LoRA: the LLM's linear layers stay frozen)")
    lora_alpha: int = flag(16, "LoRA alpha")
    lora_dropout: float = flag(0.05, "LoRA dropout")
    lora_target_modules: str = flag("q_proj,v_proj", "comma-separated linear layer names inside the LLM that get LoRA")
    train_vision_tower: bool = flag(False, "also train the CLIP vision tower (for tiny models; frozen by default)")
    freeze_pixel_decoder: bool = flag(False, "keep out_mm_projector, image_feature_neck and pixel_decoder as loaded (e.g. after the tiny models' segmentation pretraining)")
    train_llm: bool = flag(False, "train every LLM weight instead of LoRA (needs --lora_r 0; for LLMs trained from scratch, e.g. tiny models)")

    @property
    def lora_targets(self) -> tuple[str, ...]:
        return tuple(name.strip() for name in self.lora_target_modules.split(",") if name.strip())

    def check(self) -> None:
        """Raise ValueError for combinations that cannot work."""
        if self.lora_r < 0:
            raise ValueError(f"--lora_r={self.lora_r}: must be >= 0 (0 disables LoRA)")
        if self.train_llm and self.lora_r:
            raise ValueError(f"--train_llm trains the whole LLM: pass --lora_r 0 with it (got --lora_r {self.lora_r})")
        if self.lora_r and not self.lora_targets:
            raise ValueError("--lora_target_modules is empty: name the LLM linear layers for LoRA, e.g. q_proj,v_proj")


def prepare_trainable(model: PixelLMForCausalLM, scope: TrainScope) -> nn.Module:
    """Freeze everything, add LoRA to the LLM, then unfreeze what ``scope`` trains; returns the model to train."""
    scope.check()
    model.requires_grad_(False)
    wrapped = add_lora(model, scope.lora_r, scope.lora_alpha, scope.lora_dropout, scope.lora_targets) if scope.lora_r > 0 else model
    base = base_model_of(wrapped)
    base.get_input_embeddings().requires_grad_(True)
    base.get_output_embeddings().requires_grad_(True)
    for name in FULLY_TRAINED:
        getattr(base, name).requires_grad_(not (scope.freeze_pixel_decoder and name in DECODER_SIDE))
    base.vision_tower.requires_grad_(scope.train_vision_tower)
    if scope.train_llm:
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
