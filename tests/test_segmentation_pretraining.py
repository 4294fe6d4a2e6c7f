"""Segmentation pretraining on the synthetic world's label maps: what it trains, what it leaves, what it writes."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer

from data_fixtures import synthetic_world
from dataset.mix import DataArgs, HybridDataset
from model import PixelLMForCausalLM, PixelLMImageProcessor
from training.segmentation_pretraining import (
    PretrainArgs,
    collate_samples,
    mask_loss,
    name_states,
    parse_args,
    pretrain_segmentation,
)


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict[str, Path]:
    return synthetic_world(tmp_path_factory.mktemp("pretrain_world"), train=24, val=2)


def fixed_batch(world: dict[str, Path], processor: PixelLMImageProcessor, k: int) -> dict:
    data_args = DataArgs(dataset_dir=str(world["data"]), dataset="sem_seg", sample_rates="1", sem_seg_data="ade20k", seed=5)
    dataset = HybridDataset(data_args, processor, k)
    return collate_samples([dataset[i] for i in range(4)])


def config_dict(model: PixelLMForCausalLM) -> dict:
    return {k: v for k, v in model.config.to_dict().items() if k != "_name_or_path"}


def test_name_states_depend_only_on_the_name(world):
    model = PixelLMForCausalLM.from_pretrained(world["tiny"])
    tokenizer = AutoTokenizer.from_pretrained(world["tiny"])
    states = name_states(model, tokenizer, ["red circle", "blue star", "red circle"])
    assert states.shape == (3, model.config.num_seg_tokens, model.config.text_config.hidden_size)
    assert torch.equal(states[0], states[2])
    assert not torch.allclose(states[0], states[1])
    # The final RMSNorm brings them to the scale of real hidden states (about 1 per channel).
    assert states.pow(2).mean(-1).sqrt().mean().item() == pytest.approx(1.0, rel=0.1)


def test_pretraining_trains_vision_and_decoder_only_and_lowers_the_mask_loss(world):
    base = PixelLMForCausalLM.from_pretrained(world["tiny"])
    tokenizer = AutoTokenizer.from_pretrained(world["tiny"])
    processor = PixelLMImageProcessor.from_pretrained(world["tiny"])
    batch = fixed_batch(world, processor, base.config.num_seg_tokens)
    assert len(batch["names"]) == len(batch["masks"]) == batch["image_index"].numel()
    with torch.no_grad():
        loss_before, _ = mask_loss(base, batch, tokenizer, torch.device("cpu"), torch.float32)

    out = world["root"] / "pretrained"
    args = PretrainArgs(version=str(world["tiny"]), dataset_dir=str(world["data"]), out=str(out), steps=25, batch_size=4,
                        warmup_steps=5, device="cpu")
    result = pretrain_segmentation(args)
    assert result["steps"] == 25 and result["out"] == str(out)
    assert not out.with_name(out.name + ".partial").exists()

    trained = PixelLMForCausalLM.from_pretrained(out)
    assert config_dict(trained) == config_dict(base)
    assert AutoTokenizer.from_pretrained(out).get_vocab() == tokenizer.get_vocab()
    before, after = base.state_dict(), trained.state_dict()
    changed = {name for name in before if not torch.equal(before[name], after[name])}
    for prefix in ("vision_tower.", "out_mm_projector.", "image_feature_neck.", "seg_codebook.", "pixel_decoder."):
        assert any(name.startswith(prefix) for name in changed), prefix
    assert any("embed_tokens" in name for name in changed)
    untouched = [name for name in changed if name.startswith(("mm_projector.", "language_model.model.layers.", "language_model.lm_head."))]
    assert untouched == []

    with torch.no_grad():
        loss_after, _ = mask_loss(trained, batch, tokenizer, torch.device("cpu"), torch.float32)
    assert float(loss_after) < 0.8 * float(loss_before)


def test_cli_flags_keep_the_dataclass_defaults():
    args = parse_args(["--version", "v", "--dataset_dir", "d", "--out", "o", "--steps", "7"])
    assert args.steps == 7 and args.sem_seg_data == "ade20k" and args.lr == PretrainArgs().lr
    assert args.seg_token_num is None
