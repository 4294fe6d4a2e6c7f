"""Collate: the batch contract, label masking, per-image entries and truncation that never splits a seg group."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import data_fixtures as fx
from dataset.collate import Collator
from dataset.mix import DataArgs, HybridDataset
from dataset.sample import Sample
from model.conversation import IGNORE_INDEX, Turn, tokenize_conversation
from model.processing_pixellm import PixelLMImageProcessor
from model.tiny_tokenizer import train_tiny_tokenizer

K = 6
NUM_IMAGE_TOKENS = 4
PROC = PixelLMImageProcessor(image_size=32)
CONTRACT_KEYS = {
    "pixel_values", "clip_resize", "offset", "input_ids", "labels", "attention_mask", "masks_list",
    "original_sizes", "conversation_list", "questions_list", "sampled_classes_list", "image_paths", "inference",
}


@pytest.fixture(scope="module")
def tokenizer():
    return train_tiny_tokenizer(["the red box and the blue box", "How many boxes are there?"], K, vocab_size=400)


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("tree")
    fx.write_ade20k(str(root), n=2)
    fx.write_llava(str(root))
    fx.write_muse(str(root))
    return root


def dataset(root, kind: str, **kw) -> HybridDataset:
    return HybridDataset(DataArgs(dataset_dir=str(root), dataset=kind, sample_rates="1", seed=1, **kw), PROC, K)


def supervised_text(tok, labels: torch.Tensor) -> str:
    return tok.decode([int(t) for t in labels if t != IGNORE_INDEX])


def expected_answers(tok, turns: list[Turn]) -> str:
    ids = []
    for turn in turns:
        ids += tok(" " + turn.answer, add_special_tokens=False).input_ids + [tok.eos_token_id]
    return tok.decode(ids)


def test_batch_contract_and_labels(tokenizer, tree):
    tok, ids = tokenizer
    samples = [dataset(tree, "sem_seg", sem_seg_data="ade20k")[0], dataset(tree, "vqa")[0], dataset(tree, "multi_reason_seg")[0]]
    batch = Collator(tok, ids, NUM_IMAGE_TOKENS, 512)(samples)
    assert set(batch) == CONTRACT_KEYS
    assert batch["pixel_values"].shape == (3, 3, 32, 32)  # one entry per image, not per conversation
    convs = [len(s.conversations) for s in samples]
    assert batch["offset"].tolist() == [0, convs[0], convs[0] + convs[1], sum(convs)]
    q = sum(convs)
    assert batch["input_ids"].shape[0] == q == batch["labels"].shape[0] == batch["attention_mask"].shape[0]
    assert batch["input_ids"].dtype == torch.long and batch["attention_mask"].dtype == torch.long
    assert batch["clip_resize"].tolist() == [list(s.processed.clip_resize) for s in samples]
    assert batch["original_sizes"].tolist() == [[fx.HEIGHT, fx.WIDTH]] * 3
    row = 0
    for s, masks in zip(samples, batch["masks_list"]):
        assert masks.dtype == torch.float32 and torch.equal(masks, torch.from_numpy(s.masks).float())
        for turns in s.conversations:
            lab = batch["labels"][row]
            assert supervised_text(tok, lab) == expected_answers(tok, turns)
            n = int(batch["attention_mask"][row].sum())
            assert (batch["attention_mask"][row, n:] == 0).all() and (lab[n:] == IGNORE_INDEX).all()
            assert (batch["input_ids"][row, n:] == tok.pad_token_id).all()
            assert int((batch["input_ids"][row] == ids.image).sum()) == NUM_IMAGE_TOKENS
            row += 1
    vqa_labels = batch["labels"][convs[0]]
    assert supervised_text(tok, vqa_labels) == expected_answers(tok, samples[1].conversations[0])
    assert "The blue box." in supervised_text(tok, vqa_labels)  # the second VQA answer is supervised too
    assert batch["sampled_classes_list"][2] == samples[2].targets
    assert batch["inference"] is False


def many_target_sample(n_targets: int) -> Sample:
    image = np.zeros((fx.HEIGHT, fx.WIDTH, 3), dtype=np.uint8)
    group = " ".join(f"[SEG{i}]" for i in range(K))
    answer = " and ".join(f"box {i} {group}" for i in range(n_targets)) + "."
    masks = np.zeros((n_targets, fx.HEIGHT, fx.WIDTH), dtype=np.uint8)
    for i in range(n_targets):
        masks[i, i, :] = 1  # mask i is identifiable by its row
    return Sample("x.jpg", image, PROC.preprocess(image), [[Turn("<image>\nSegment all boxes.", answer)]],
                  [[f"box {i}" for i in range(n_targets)]], masks, "test")


def test_truncation_never_splits_a_seg_group(tokenizer):
    tok, ids = tokenizer
    sample = many_target_sample(5)
    full = tokenize_conversation(tok, sample.conversations[0], ids, NUM_IMAGE_TOKENS).input_ids
    image_end = full.index(ids.im_end) + 1
    seen_kept = set()
    for max_len in range(image_end + 1, len(full) + 2):
        batch = Collator(tok, ids, NUM_IMAGE_TOKENS, max_len)([sample])
        row = batch["input_ids"][0][batch["attention_mask"][0] == 1].tolist()
        assert len(row) <= max_len
        seg_count = sum(t in ids.seg for t in row)
        assert seg_count % K == 0
        kept = seg_count // K
        masks = batch["masks_list"][0]
        assert masks.shape[0] == kept
        for i in range(kept):  # the i-th remaining group still pairs with the i-th mask
            assert masks[i, i].sum() == fx.WIDTH and masks[i].sum() == fx.WIDTH
        assert batch["sampled_classes_list"][0] == [[f"box {i}" for i in range(kept)]]
        seen_kept.add(kept)
    assert seen_kept == set(range(6))


def test_max_length_shorter_than_prompt_is_a_clear_error(tokenizer):
    tok, ids = tokenizer
    with pytest.raises(ValueError, match="model_max_length"):
        Collator(tok, ids, NUM_IMAGE_TOKENS, 8)([many_target_sample(1)])


def test_mismatched_groups_and_targets_are_refused(tokenizer):
    tok, ids = tokenizer
    sample = many_target_sample(2)
    sample.targets = [["only one"]]
    sample.masks = sample.masks[:1]
    with pytest.raises(ValueError, match="2 seg groups"):
        Collator(tok, ids, NUM_IMAGE_TOKENS, 512)([sample])
