"""LoRA on the LLM only: peft adapters on the named linear layers inside ``language_model``."""

from __future__ import annotations

import re

from peft import LoraConfig, PeftModel, get_peft_model

from model import PixelLMForCausalLM


def lora_target_regex(target_modules: tuple[str, ...]) -> str:
    """A peft ``target_modules`` pattern (full match) for the named layers inside ``language_model`` only
    (CLIP has q_proj/v_proj layers too)."""
    names = "|".join(re.escape(name) for name in target_modules)
    return rf"language_model\.(?:.*\.)?(?:{names})"


def add_lora(model: PixelLMForCausalLM, r: int, alpha: int, dropout: float, target_modules: tuple[str, ...]) -> PeftModel:
    """``model`` wrapped by peft with LoRA adapters of rank ``r`` on ``target_modules`` of its LLM."""
    config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=lora_target_regex(target_modules), bias="none")
    try:
        return get_peft_model(model, config)
    except ValueError as err:
        raise ValueError(
            f"LoRA found none of --lora_target_modules {list(target_modules)} inside the LLM "
            f"({type(model.language_model).__name__}): name its linear layers, e.g. q_proj,v_proj"
        ) from err
