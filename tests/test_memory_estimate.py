"""bench/memory_estimate.py: every term against a hand-computed case, ZeRO-2 partitioning, counts of a real model."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from bench.memory_estimate import ModelShape, TrainingSetup, estimate, model_shape, run
from model import PixelLMConfig, PixelLMForCausalLM
from training.freeze_policy import TrainScope, prepare_trainable, trainable_summary

PRESETS = Path(__file__).resolve().parents[1] / "configs" / "models"

SMALL = ModelShape(
    params=1000,
    trainable=100,
    llm_layers=2,
    llm_hidden=8,
    llm_heads=2,
    vocab=10,
    clip_tokens=5,
    clip_hidden=4,
    clip_heads=2,
    clip_intermediate=16,
    clip_states_kept=3,
    num_image_tokens=2,
)
SMALL_SETUP = TrainingSetup(micro_batch=1, conversations_per_image=2, model_max_length=4, reduce_bucket_size=50)


def test_every_term_of_a_hand_computed_case():
    # s = 4, b = 1 image x 2 conversations = 2, h = 8, a = 2, L = 2, V = 10.
    plain = estimate(SMALL, SMALL_SETUP, gpus=1, checkpointing=False)
    assert plain.weights == 2 * 1000
    assert plain.optimizer == 12 * 100
    assert plain.gradients == 2 * 100
    assert plain.buckets == 2 * 50 * 2  # two bf16 buffers (overlap_comm)
    per_layer = 34 * 4 * 2 * 8 + 5 * 2 * 4 * 4 * 2  # 2176 + 320
    assert plain.llm_activations == 2 * per_layer == 4992
    assert plain.attention_scores == 2 * 320
    assert plain.logits == 4 * 4 * 2 * 10 == 320
    # CLIP: s = 5, b = 1, h = 4, a = 2, i = 16; 3 kept states + q/k/v/out + scores/probs + MLP hidden, bf16.
    assert plain.clip_peak == 2 * (3 * 5 * 4 + 4 * 5 * 4 + 2 * 2 * 25 + 2 * 5 * 16) == 800
    assert plain.total == 2000 + 1200 + 200 + 200 + max(800, 4992 + 320) == 8912

    ckpt = estimate(SMALL, SMALL_SETUP, gpus=1, checkpointing=True)
    assert ckpt.llm_activations == 2 * (2 * 4 * 2 * 8) + per_layer == 2752  # layer inputs + one recomputed layer
    assert ckpt.attention_scores == 320
    assert ckpt.total == 3600 + 2752 + 320


def test_clip_peak_counts_when_it_exceeds_the_llm():
    setup = TrainingSetup(micro_batch=1, conversations_per_image=1, model_max_length=1, reduce_bucket_size=0)
    result = estimate(SMALL, setup, gpus=1, checkpointing=True)
    assert result.clip_peak > result.llm_activations + result.logits
    assert result.total == result.weights + result.optimizer + result.gradients + result.clip_peak


def test_flash_attention_drops_the_score_terms():
    flash = TrainingSetup(micro_batch=1, conversations_per_image=2, model_max_length=4, reduce_bucket_size=50, flash_attention=True)
    result = estimate(SMALL, flash, gpus=1, checkpointing=False)
    assert result.attention_scores == 0
    assert result.llm_activations == 2 * 34 * 4 * 2 * 8


@pytest.mark.parametrize("preset", ["pixellm_7b", "pixellm_13b"])
def test_zero2_partitions_optimizer_and_gradients_only(preset: str):
    shape = model_shape(PixelLMConfig(**json.loads((PRESETS / f"{preset}.json").read_text())), TrainingSetup())
    one = estimate(shape, TrainingSetup(), gpus=1, checkpointing=True)
    for gpus in (4, 8):
        many = estimate(shape, TrainingSetup(), gpus=gpus, checkpointing=True)
        assert many.optimizer == 12 * shape.trainable // gpus
        assert abs(many.optimizer * gpus - one.optimizer) < gpus
        assert abs(many.gradients * gpus - one.gradients) < gpus
        assert (many.weights, many.llm_activations, many.logits, many.clip_peak) == (
            one.weights, one.llm_activations, one.logits, one.clip_peak
        )


def test_counts_match_the_tiny_model_as_training_prepares_it():
    preset = json.loads((PRESETS / "tiny.json").read_text())
    config = PixelLMConfig(**preset)
    shape = model_shape(config, TrainingSetup(lora_r=8))
    resized = copy.deepcopy(preset)
    resized["text_config"]["vocab_size"] = shape.vocab  # the tokenizer's seg and image tokens
    model = prepare_trainable(PixelLMForCausalLM(PixelLMConfig(**resized)), TrainScope(lora_r=8))
    trainable, total = trainable_summary(model)["total"]
    assert (shape.trainable, shape.params) == (trainable, total)


def test_run_covers_every_model_gpu_count_and_checkpointing():
    results = run(TrainingSetup())
    keys = {(r["model"], r["gpus"], r["gradient_checkpointing"]) for r in results["rows"]}
    assert keys == {(m, n, c) for m in ("pixellm_7b", "pixellm_13b") for n in (1, 4, 8) for c in (False, True)}
    assert results["models"]["pixellm_7b"]["num_image_tokens"] == 256
