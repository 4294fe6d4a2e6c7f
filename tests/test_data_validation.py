"""Validation sets named by --val_dataset strings: teacher-forced (ReasonSeg, refer) and generation (MUSE)."""

from __future__ import annotations

import json

import numpy as np
import pytest

import data_fixtures as fx
from dataset.validation import build_val_dataset
from model.conversation import IGNORE_INDEX
from model.processing_pixellm import PixelLMImageProcessor
from model.tiny_tokenizer import train_tiny_tokenizer

PROC = PixelLMImageProcessor(image_size=32)
K = 6
G = " ".join(f"[SEG{i}]" for i in range(K))


@pytest.fixture(scope="module")
def tok():
    return train_tiny_tokenizer(["blue box", "Which boxes are not blue?"], K, vocab_size=400)


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("val")
    fx.write_reason_seg(str(root), "val")
    fx.write_refer(str(root))
    fx.write_grefcoco(str(root))
    for split in ("val", "test_less", "test_many"):
        fx.write_muse(str(root), split)
    return root


def build(name, tree, tok):
    tokenizer, ids = tok
    return build_val_dataset(name, str(tree), tokenizer, PROC, ids, num_image_tokens=4, model_max_length=256)


def test_reason_seg_val_teacher_forced(tree, tok):
    ds = build("ReasonSeg|val", tree, tok)
    assert len(ds) == 1
    s = ds[0]
    assert s.inference
    assert [(c[0].question, c[0].answer) for c in s.conversations] == [
        ("<image>\nCan you segment the the box that looks like grass in this image?", f"{G}.")]
    batch = ds.collate_fn([s])
    assert batch["inference"] is True
    supervised = [t for t in batch["labels"][0].tolist() if t != IGNORE_INDEX]
    assert supervised[:K] == list(tok[1].seg)


def test_refcoco_val_split(tree, tok):
    ds = build("refcoco|unc|val", tree, tok)
    assert len(ds) == 1  # only image 2 holds val refs
    s = ds[0]
    assert s.targets == [["blue box"], ["the long one"]]
    assert [c[0].question for c in s.conversations] == [
        "<image>\nCan you segment the blue box in this image?", "<image>\nCan you segment the the long one in this image?"]
    for m in s.masks:
        assert fx.iou(m, fx.box_mask("blue")) > 0.9


def test_grefcoco_val_union_and_no_target(tree, tok):
    s = build("grefcoco|unc|val", tree, tok)[0]
    assert s.targets == [["the two small boxes"], ["the yellow box"]]
    union = fx.box_mask("red") | fx.box_mask("green")
    assert fx.iou(s.masks[0], union) > 0.9
    assert s.masks[1].sum() == 0


@pytest.mark.parametrize("split", ["val", "test_less", "test_many"])
def test_muse_val_is_a_generation_prompt(tree, tok, split):
    ds = build(f"MultiReasonSeg|{split}", tree, tok)
    s = ds[0]
    assert [(c[0].question, c[0].answer) for c in s.conversations] == [
        ("<image>\nWhich boxes are not blue? Please respond with segmentation mask.", None),
        ("<image>\nWhich box is longest? Please respond with segmentation mask.", None)]
    batch = ds.collate_fn([s, ds[0]])
    assert batch["sampled_classes_list"][0] == [["the green box", "the red box"], ["the blue box"]]
    assert [len(t) for t in batch["sampled_classes_list"][0]] == [2, 1]  # per-question target counts
    assert batch["offset"].tolist() == [0, 2, 4]
    assert (batch["labels"] == IGNORE_INDEX).all()
    assert batch["masks_list"][0].shape == (3, fx.HEIGHT, fx.WIDTH)
    for m, box in zip(batch["masks_list"][0], ("green", "red", "blue")):
        assert fx.iou(m.numpy().astype(np.uint8), fx.box_mask(box)) > 0.9
    tokenizer = tok[0]
    last = [int(t) for t in batch["input_ids"][0][batch["attention_mask"][0] == 1]]
    assert tokenizer.decode(last).endswith("ASSISTANT:")


def test_val_drops_inconsistent_questions(tmp_path, tok):
    fx.write_muse(str(tmp_path), "val")
    path = tmp_path / "muse" / "muse_val.json"
    items = json.loads(path.read_text())
    items[0]["text_answers"][0] = "Only one {seg}."
    fx.write_json(str(path), items)
    ds = build("MultiReasonSeg|val", tmp_path, tok)
    assert ds.items[0].questions == ["Which box is longest?"]
    assert ds.skip_counter.counts() == {"MultiReasonSeg|val": {"target_count_mismatch": 1}}


def test_unknown_val_name(tree, tok):
    with pytest.raises(ValueError, match="unknown --val_dataset"):
        build("ReasonSeg", tree, tok)
