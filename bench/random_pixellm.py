"""A PixelLM with random weights, shaped by a ``configs/models`` preset, and recipe-shaped training batches for it.

Nothing is downloaded. The tokenizer is the locally trained byte-level BPE of ``model/tiny_tokenizer.py``;
the LLM's embedding matrix and ``lm_head`` have the preset's vocabulary plus the K seg tokens and the three
image tokens (32,000 + 9 rows for the LLaMA presets), as a LLaVA starting point has once
``model.llava_loading`` has added them. Every id of that tokenizer lies below the preset's vocabulary, so
prompts, seg groups, the collator and the predictor run unchanged; only the text is not LLaMA's.

Training batches go through the real ``dataset.collate.Collator``: each image carries ``rows`` conversations
whose token count is exactly ``text_tokens`` plus the image tokens, with ``targets`` seg groups each and one
random rectangle mask per target.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import torch
from transformers import PreTrainedTokenizerBase

from bench.param_count import NUM_IMAGE_TOKENS_ADDED, load_presets
from dataset.collate import Collator
from dataset.sample import Sample
from model import PixelLMConfig, PixelLMForCausalLM, PixelLMImageProcessor
from model.conversation import Turn, tokenize_conversation
from model.llava_loading import default_dtype
from model.tiny_tokenizer import train_tiny_tokenizer
from model.tokens import IMAGE_TOKEN, PixelLMTokenIds, seg_group_text

QUESTION = f"{IMAGE_TOKEN}\nPlease segment every object this question is about."


@dataclass
class RandomPixelLM:
    """model: on the requested device and dtype, in eval mode. estimate_config: the same preset as
    ``bench/memory_estimate.py`` counts it (vocabulary before the PixelLM tokens are added)."""

    model: PixelLMForCausalLM
    tokenizer: PreTrainedTokenizerBase
    token_ids: PixelLMTokenIds
    processor: PixelLMImageProcessor
    estimate_config: PixelLMConfig


def preset_kwargs(preset: str, llm_layers: int | None = None) -> dict:
    """The ``PixelLMConfig`` keyword arguments of ``configs/models/<preset>.json``, optionally with fewer LLM layers."""
    presets = load_presets()
    if preset not in presets:
        raise ValueError(f"no model preset {preset!r} in configs/models/ (have {sorted(presets)})")
    kwargs = copy.deepcopy(presets[preset])
    if llm_layers is not None:
        full = kwargs["text_config"]["num_hidden_layers"]
        if not 1 <= llm_layers <= full:
            raise ValueError(f"llm_layers={llm_layers}: the {preset} preset has {full} LLM layers; pick 1..{full}")
        kwargs["text_config"]["num_hidden_layers"] = llm_layers
    return kwargs


def build_random_pixellm(
    preset: str, device: torch.device, dtype: torch.dtype, seed: int = 0, llm_layers: int | None = None
) -> RandomPixelLM:
    """Build the preset's PixelLM directly on ``device`` in ``dtype``, every weight random (seeded)."""
    kwargs = preset_kwargs(preset, llm_layers)
    estimate_config = PixelLMConfig(**kwargs)
    num_seg = estimate_config.tokens_per_target
    text = kwargs["text_config"]
    rows = text["vocab_size"] + num_seg + NUM_IMAGE_TOKENS_ADDED
    torch.manual_seed(seed)
    tokenizer, token_ids = train_tiny_tokenizer([], num_seg, model_max_length=text["max_position_embeddings"])
    if len(tokenizer) > rows:
        raise ValueError(f"the local tokenizer has {len(tokenizer)} tokens, more than the {rows} embedding rows of {preset}")
    config = PixelLMConfig(
        **{
            **kwargs,
            "text_config": {
                **text,
                "vocab_size": rows,
                "bos_token_id": tokenizer.bos_token_id,
                "eos_token_id": tokenizer.eos_token_id,
                "pad_token_id": tokenizer.pad_token_id,
            },
        },
        image_token_id=token_ids.image,
        im_start_token_id=token_ids.im_start,
        im_end_token_id=token_ids.im_end,
        seg_token_ids=list(token_ids.seg),
    )
    with torch.device(device), default_dtype(dtype):
        model = PixelLMForCausalLM(config)
    processor = PixelLMImageProcessor(image_size=config.image_size)
    return RandomPixelLM(model.eval(), tokenizer, token_ids, processor, estimate_config)


def exact_length_conversation(tokenizer: PreTrainedTokenizerBase, token_ids: PixelLMTokenIds, num_image_tokens: int, length: int, targets: int) -> list[Turn]:
    """One question and an answer of filler words and ``targets`` seg groups, tokenising to exactly ``length`` ids."""
    groups = " and ".join(f"object {seg_group_text(len(token_ids.seg))}" for _ in range(targets))

    def turns(filler: int) -> list[Turn]:
        return [Turn(QUESTION, " ".join(["the"] * filler + [groups]) + ".")]

    filler = 0
    for _ in range(4):
        n = len(tokenize_conversation(tokenizer, turns(filler), token_ids, num_image_tokens).input_ids)
        if n == length:
            return turns(filler)
        filler += length - n
        if filler < 0:
            raise ValueError(f"a row of {targets} targets needs more than {length} tokens: raise the text tokens per row")
    raise RuntimeError(f"could not make a conversation of exactly {length} tokens (filler words do not tokenise one by one)")


def random_masks(rng: np.random.Generator, count: int, height: int, width: int) -> np.ndarray:
    """``count`` uint8 masks [count, height, width], each one random rectangle of ones."""
    masks = np.zeros((count, height, width), dtype=np.uint8)
    for mask in masks:
        top, left = rng.integers(0, height // 2), rng.integers(0, width // 2)
        mask[top : top + height // 3, left : left + width // 3] = 1
    return masks


def recipe_batch(
    built: RandomPixelLM, images: int, rows: int, targets: int, text_tokens: int, image_hw: tuple[int, int], seed: int = 0
) -> dict:
    """A collated batch of ``images`` random images x ``rows`` conversations, each row ``text_tokens`` + image tokens long.

    Returns the Collator's dict: input_ids / labels / attention_mask [images * rows, T] with no padding.
    """
    config = built.model.config
    length = text_tokens + config.num_image_tokens
    conversation = exact_length_conversation(built.tokenizer, built.token_ids, config.num_image_tokens, length, targets)
    rng = np.random.default_rng(seed)
    samples = []
    for i in range(images):
        image = rng.integers(0, 256, (*image_hw, 3), dtype=np.uint8)
        samples.append(
            Sample(
                image_path=f"random-{i}",
                image=image,
                processed=built.processor.preprocess(image),
                conversations=[list(conversation) for _ in range(rows)],
                targets=[[f"object {t}" for t in range(targets)] for _ in range(rows)],
                masks=random_masks(rng, rows * targets, *image_hw),
                source="random",
            )
        )
    batch = Collator(built.tokenizer, built.token_ids, config.num_image_tokens, length)(samples)
    if tuple(batch["input_ids"].shape) != (images * rows, length) or not bool(batch["attention_mask"].all()):
        raise RuntimeError(f"expected {images * rows} unpadded rows of {length} tokens, got {tuple(batch['input_ids'].shape)}")
    return batch
