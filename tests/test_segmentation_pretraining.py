"""Segmentation pretraining on the synthetic world's label maps: what it trains, what it leaves, what it writes."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from data_fixtures import synthetic_world
from dataset.mix import DataArgs, HybridDataset
from demo.segmentation_pretraining import (
    PretrainArgs,
    collate_samples,
    image_token_loss,
    keep_expressions_with,
    mask_loss,
    name_states,
    parse_args,
    patch_class_loss,
    patch_position_loss,
    patch_positions,
    pretrain_segmentation,
)
from model import PixelLMConfig, PixelLMForCausalLM, PixelLMImageProcessor
from model.conversation import IGNORE_INDEX
from model.tokenization import load_tokenizer
from model.vision_tower import patch_validity


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict[str, Path]:
    return synthetic_world(tmp_path_factory.mktemp("pretrain_world"), train=24, val=2)


def fixed_batch(world: dict[str, Path], model: PixelLMForCausalLM, processor: PixelLMImageProcessor, dataset: str = "sem_seg") -> dict:
    data_args = DataArgs(dataset_dir=str(world["data"]), dataset=dataset, sample_rates="1", sem_seg_data="ade20k",
                         refer_seg_data="refcoco", seed=5)
    data = HybridDataset(data_args, processor, model.config.tokens_per_target)
    return collate_samples([data[i] for i in range(4)], grid=model.config.vision_grid, llm_grid=model.config.llm_grid,
                           image_size=model.config.image_size)


def batch_losses(model: PixelLMForCausalLM, key_head: torch.nn.Linear, batch: dict, tokenizer) -> tuple[float, float]:
    with torch.no_grad():
        features = model.encode_images(batch["pixel_values"], batch["clip_resize"])
        return float(mask_loss(model, features, batch, tokenizer)[0]), float(patch_class_loss(model, key_head, features, batch, tokenizer)[0])


def config_dict(model: PixelLMForCausalLM) -> dict:
    return {k: v for k, v in model.config.to_dict().items() if k != "_name_or_path"}


def test_name_states_depend_only_on_the_name(world):
    model = PixelLMForCausalLM.from_pretrained(world["tiny"])
    tokenizer = load_tokenizer(world["tiny"])
    states = name_states(model, tokenizer, ["red circle", "blue star", "red circle"])
    assert states.shape == (3, model.config.tokens_per_target, model.config.text_config.hidden_size)
    assert torch.equal(states[0], states[2])
    assert not torch.allclose(states[0], states[1])
    # The final RMSNorm brings them to the scale of real hidden states (about 1 per channel).
    assert states.pow(2).mean(-1).sqrt().mean().item() == pytest.approx(1.0, rel=0.1)


def test_pretraining_trains_vision_and_decoder_only_and_lowers_the_mask_loss(world):
    base = PixelLMForCausalLM.from_pretrained(world["tiny"])
    tokenizer = load_tokenizer(world["tiny"])
    processor = PixelLMImageProcessor.from_pretrained(world["tiny"])
    batch = fixed_batch(world, base, processor)
    assert len(batch["names"]) == len(batch["masks"]) == batch["image_index"].numel()
    loss_before, _ = batch_losses(base, torch.nn.Linear(base.config.text_config.hidden_size, base.config.out_dim), batch, tokenizer)

    out = world["root"] / "pretrained"
    log_dir = world["root"] / "pretrain_log"
    args = PretrainArgs(version=str(world["tiny"]), dataset_dir=str(world["data"]), out=str(out), dataset="sem_seg",
                        sample_rates="1", sem_seg_data="ade20k", vision_steps=10, steps=25, batch_size=4, lr=1e-3, warmup_steps=5,
                        precision="fp32", workers=0, device="cpu", log_dir=str(log_dir), patch_position_loss_weight=1.0)
    result = pretrain_segmentation(args)
    assert result["steps"] == 35 and result["out"] == str(out)
    assert 0.0 <= result["vision_patch_accuracy"] <= 1.0
    events = EventAccumulator(str(log_dir))
    events.Reload()
    assert [e.step for e in events.Scalars("pretrain/vision/patch_acc")] == [9]
    assert [e.step for e in events.Scalars("pretrain/segmentation/iou")] == [19, 29]
    assert [e.step for e in events.Scalars("pretrain/segmentation/position_error")] == [19, 29]
    assert not out.with_name(out.name + ".partial").exists()

    trained = PixelLMForCausalLM.from_pretrained(out)
    assert config_dict(trained) == config_dict(base)
    assert load_tokenizer(out).get_vocab() == tokenizer.get_vocab()
    before, after = base.state_dict(), trained.state_dict()
    changed = {name for name in before if not torch.equal(before[name], after[name])}
    for prefix in ("vision_tower.", "out_mm_projector.", "image_feature_neck.", "seg_codebook.", "pixel_decoder."):
        assert any(name.startswith(prefix) for name in changed), prefix
    assert any("embed_tokens" in name for name in changed)
    untouched = [name for name in changed if name.startswith(("mm_projector.", "language_model.model.layers.", "language_model.lm_head."))]
    assert untouched == []

    loss_after, _ = batch_losses(trained, torch.nn.Linear(base.config.text_config.hidden_size, base.config.out_dim), batch, tokenizer)
    assert loss_after < 0.8 * loss_before


def test_patch_labels_name_the_class_under_each_patch_centre(world):
    model = PixelLMForCausalLM.from_pretrained(world["tiny"])
    processor = PixelLMImageProcessor.from_pretrained(world["tiny"])
    batch = fixed_batch(world, model, processor)
    g, size = model.config.vision_grid, model.config.image_size
    labels = batch["patch_labels"]
    assert labels.shape == (4, g, g) and set(batch["names"]) == set(batch["class_names"])
    checked = 0
    for mask, name, b in zip(batch["masks"], batch["names"], batch["image_index"].tolist()):
        resized_h, resized_w = batch["clip_resize"][b].tolist()
        height, width = mask.shape
        for row, col in zip(*torch.nonzero(labels[b] == batch["class_names"].index(name), as_tuple=True)):
            y = int((row + 0.5) * size / g * height / resized_h)
            x = int((col + 0.5) * size / g * width / resized_w)
            assert mask[y, x] == 1
            checked += 1
        # Every patch whose centre falls inside the mask carries the label.
        assert int((labels[b] == batch["class_names"].index(name)).sum()) > 0
    assert checked > 0
    # Padding patches are never labelled: the bottom/right rows and columns beyond clip_resize.
    for b in range(4):
        resized_h, resized_w = batch["clip_resize"][b].tolist()
        first_pad_row = int(-(-resized_h * g // size))
        assert (labels[b, first_pad_row:] == -100).all()


def test_referring_samples_get_no_patch_labels_and_no_class_loss(world):
    model = PixelLMForCausalLM.from_pretrained(world["tiny"])
    tokenizer = load_tokenizer(world["tiny"])
    processor = PixelLMImageProcessor.from_pretrained(world["tiny"])
    batch = fixed_batch(world, model, processor, dataset="refer_seg")
    assert batch["class_names"] == [] and (batch["patch_labels"] == -100).all()
    key_head = torch.nn.Linear(model.config.text_config.hidden_size, model.config.out_dim)
    assert batch_losses(model, key_head, batch, tokenizer)[1] == 0.0


def test_patch_class_loss_learns_to_tell_classes_apart(world):
    """A few steps on one batch: the loss falls from about ln(U) and the patch accuracy rises."""
    torch.manual_seed(0)
    model = PixelLMForCausalLM.from_pretrained(world["tiny"])
    tokenizer = load_tokenizer(world["tiny"])
    processor = PixelLMImageProcessor.from_pretrained(world["tiny"])
    batch = fixed_batch(world, model, processor)
    key_head = torch.nn.Linear(model.config.text_config.hidden_size, model.config.out_dim, bias=False)
    params = [*model.vision_tower.parameters(), *model.out_mm_projector.parameters(), *model.image_feature_neck.parameters(),
              *key_head.parameters()]
    optimizer = torch.optim.AdamW(params, lr=3e-3)
    accuracies, losses = [], []
    for _ in range(30):
        features = model.encode_images(batch["pixel_values"], batch["clip_resize"])
        loss, accuracy = patch_class_loss(model, key_head, features, batch, tokenizer)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss))
        accuracies.append(accuracy)
    assert losses[0] < 2 * math.log(len(batch["class_names"]))  # cosine logits: no confident guess at the start
    assert losses[-1] < 0.5 * losses[0]
    assert accuracies[-1] > accuracies[0] + 0.2


def test_image_token_loss_aligns_llm_image_tokens_with_the_names(world):
    """A few steps on one batch: the LLM's image tokens come to point at the input embeddings of the names under them."""
    torch.manual_seed(0)
    model = PixelLMForCausalLM.from_pretrained(world["tiny"])
    tokenizer = load_tokenizer(world["tiny"])
    batch = fixed_batch(world, model, PixelLMImageProcessor.from_pretrained(world["tiny"]))
    assert batch["token_labels"].shape == (4, model.config.llm_grid, model.config.llm_grid)
    assert (batch["token_labels"] != IGNORE_INDEX).any()
    params = [*model.vision_tower.parameters(), *model.mm_projector.parameters(), model.get_input_embeddings().weight]
    optimizer = torch.optim.AdamW(params, lr=3e-3)
    accuracies, losses = [], []
    for _ in range(30):
        features = model.encode_images(batch["pixel_values"], batch["clip_resize"], decoder_features=False)
        loss, accuracy = image_token_loss(model, features, batch, tokenizer)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss))
        accuracies.append(accuracy)
    assert losses[-1] < 0.5 * losses[0]
    assert accuracies[-1] > accuracies[0] + 0.2


def test_patch_position_loss_reads_row_and_column_and_ignores_padding():
    g, width = 4, 5
    valid = torch.zeros(1, g, g, dtype=torch.bool)
    valid[0, :3, :2] = True  # a tall image: 3 rows and 2 columns of patches, the rest padding
    features = torch.randn(1, g * g, width) * 100  # padding patches: garbage everywhere
    features[0, valid.flatten(1)[0], :2] = patch_positions(g)[valid[0]]
    head = torch.nn.Linear(width, 2)
    with torch.no_grad():
        head.weight.zero_()
        head.bias.zero_()
        head.weight[0, 0] = head.weight[1, 1] = 1.0
        loss, error = patch_position_loss(head, features, valid)
        assert (loss.item(), error) == (0.0, 0.0)
        head.bias[1] = 2 / g  # every column read one patch too far right, rows exact
        loss, error = patch_position_loss(head, features, valid)
    assert error == pytest.approx(0.5)
    assert loss.item() == pytest.approx(0.5 * (2 / g) ** 2)


def test_patch_position_loss_teaches_the_vision_tower_where_each_patch_is(world):
    """Steps on one batch: the patch positions read from the LLM's CLIP level get well under the error of a head that
    ignores the features (the positions' mean), which is about where a random tower starts."""
    torch.manual_seed(0)
    model = PixelLMForCausalLM.from_pretrained(world["tiny"])
    batch = fixed_batch(world, model, PixelLMImageProcessor.from_pretrained(world["tiny"]))
    head = torch.nn.Linear(model.config.vision_config.hidden_size, 2)
    g = model.config.vision_grid
    valid = patch_validity(batch["clip_resize"], model.config.image_size, g)
    positions = patch_positions(g)[None].expand(len(valid), -1, -1, -1)[valid]
    mean_guess_error = float((positions - positions.mean(0)).abs().mean()) * g / 2
    optimizer = torch.optim.AdamW([*model.vision_tower.parameters(), *head.parameters()], lr=1e-3)
    errors = []
    for _ in range(200):
        features = model.encode_images(batch["pixel_values"], batch["clip_resize"], decoder_features=False)
        loss, error = patch_position_loss(head, features.clip_levels[:, 0], valid)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        errors.append(error)
    assert min(errors[:20]) > 0.9 * mean_guess_error
    assert errors[-1] < 0.75 * mean_guess_error


def test_cli_flags_keep_the_dataclass_defaults():
    args = parse_args(["--version", "v", "--dataset_dir", "d", "--out", "o", "--steps", "7", "--sem_seg_data", "ade20k"])
    assert args.steps == 7 and args.sem_seg_data == "ade20k" and args.lr == PretrainArgs().lr
    assert args.seg_token_num is None


def test_only_named_targets_can_prompt():
    args = parse_args(["--version", "v", "--dataset_dir", "d", "--out", "o", "--dataset", "sem_seg||vqa", "--sample_rates", "1,1"])
    with pytest.raises(ValueError, match="reads target names of .*sem_seg.*refer_seg.* not \\['vqa'\\]"):
        args.validate()


def test_focus_data_names_only_expressions_with_the_focus_words(world):
    processor = PixelLMImageProcessor.from_pretrained(world["tiny"])
    tokens = PixelLMConfig.from_pretrained(world["tiny"]).tokens_per_target
    args = DataArgs(dataset_dir=str(world["data"]), dataset="refer_seg", sample_rates="1", refer_seg_data="refcoco", seed=5)
    words = {"leftmost", "topmost"}
    data = HybridDataset(args, processor, tokens)
    everything = [name for i in range(40) for question in data[i].targets for name in question]
    assert any(words.isdisjoint(name.split()) for name in everything)
    keep_expressions_with(data, words)
    focused = [name for i in range(40) for question in data[i].targets for name in question]
    assert focused and all(not words.isdisjoint(name.split()) for name in focused)
    assert {name.split()[0] for name in focused} <= words
    with pytest.raises(ValueError, match="--focus_words wavy: no training expression of refcoco contains one of them"):
        keep_expressions_with(HybridDataset(args, processor, tokens), {"wavy"})
    with pytest.raises(ValueError, match="needs refer_seg"):
        keep_expressions_with(HybridDataset(dataclasses.replace(args, dataset="sem_seg", sem_seg_data="ade20k"), processor, tokens), words)


def test_focus_phase_runs_between_vision_and_segmentation(world, tmp_path):
    log_dir = tmp_path / "log"
    args = PretrainArgs(version=str(world["tiny"]), dataset_dir=str(world["data"]), out=str(tmp_path / "out"), dataset="sem_seg||refer_seg",
                        sample_rates="1,3", sem_seg_data="ade20k", refer_seg_data="refcoco", vision_steps=0, focus_steps=10,
                        focus_words="leftmost,rightmost,topmost,bottommost", steps=10, batch_size=2, lr=1e-3, warmup_steps=2,
                        precision="fp32", workers=0, device="cpu", log_dir=str(log_dir))
    assert pretrain_segmentation(args)["steps"] == 20
    events = EventAccumulator(str(log_dir))
    events.Reload()
    assert [e.step for e in events.Scalars("pretrain/focus/iou")] == [9]
    assert [e.step for e in events.Scalars("pretrain/segmentation/iou")] == [19]


def test_focus_steps_need_focus_words():
    args = parse_args(["--version", "v", "--dataset_dir", "d", "--out", "o", "--dataset", "refer_seg", "--sample_rates", "1",
                       "--focus_steps", "5", "--focus_words", " , "])
    with pytest.raises(ValueError, match="--focus_steps 5 needs --focus_words"):
        args.validate()
