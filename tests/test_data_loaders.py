"""Each loader on a fixture tree in its real format: counts, exact texts for a fixed seed, mask placement."""

from __future__ import annotations

import numpy as np
import pytest

import data_fixtures as fx
from dataset.mix import DataArgs, HybridDataset
from model.processing_pixellm import PixelLMImageProcessor

PROC = PixelLMImageProcessor(image_size=32)
S = "[SEG0] [SEG1]"


def make(root, kind: str, seed: int = 7, **kw) -> HybridDataset:
    args = DataArgs(dataset_dir=str(root), dataset=kind, sample_rates="1", seed=seed, **kw)
    return HybridDataset(args, PROC, tokens_per_target=2)


def qa(sample):
    return [[(t.question, t.answer) for t in conv] for conv in sample.conversations]


def assert_masks_on(sample, expected: dict[str, str]) -> None:
    """Mask i covers the box named by target i (names mapped to boxes by ``expected``)."""
    names = [n for group in sample.targets for n in group]
    assert sample.masks.shape == (len(names), fx.HEIGHT, fx.WIDTH)
    for mask, name in zip(sample.masks, names):
        assert fx.iou(mask, fx.box_mask(expected[name])) > 0.9, name


ADE_NAMES = {"car": "red", "tree": "green", "person": "blue"}


def test_ade20k_count_text_and_masks(tmp_path):
    fx.write_ade20k(str(tmp_path), n=2)
    ds = make(tmp_path, "sem_seg", sem_seg_data="ade20k", num_classes_per_question=2)
    assert len(ds.datasets[0].sources[0]) == 2
    s = ds[0]
    assert qa(s) == [
        [("<image>\nWhat is person in this image? Please output segmentation mask.", f"{S}.")],
        [("<image>\nCan you segment the car in this image?", f"It is {S}.")],
        [("<image>\nPlease segment the tree in this image.", f"Sure, {S}.")],
    ]
    assert s.targets == [["person"], ["car"], ["tree"]]
    assert_masks_on(s, ADE_NAMES)
    assert s.source == "ade20k" and s.processed.original_size == (fx.HEIGHT, fx.WIDTH)


def test_multi_target_question_keeps_mask_order(tmp_path):
    fx.write_ade20k(str(tmp_path), n=1)
    ds = make(tmp_path, "sem_seg", seed=3, sem_seg_data="ade20k", num_classes_per_sample=1, num_classes_per_question=3)
    s = ds[0]
    assert qa(s) == [[(
        "<image>\nCan you segment the tree, car and person in this image?",
        f"Sure, they are {S}, {S} and {S}.",
    )]]
    assert_masks_on(s, ADE_NAMES)
    for i in range(1, 6):
        assert_masks_on(ds[i], ADE_NAMES)


def test_cocostuff_skips_dash_classes(tmp_path):
    fx.write_cocostuff(str(tmp_path))
    ds = make(tmp_path, "sem_seg", sem_seg_data="cocostuff", num_classes_per_question=3)
    for i in range(5):
        s = ds[i]
        assert sorted(n for g in s.targets for n in g) == ["car", "person"]
        assert_masks_on(s, {"person": "red", "car": "green"})


def test_mapillary_reads_config_names(tmp_path):
    fx.write_mapillary(str(tmp_path))
    s = make(tmp_path, "sem_seg", sem_seg_data="mapillary")[0]
    assert sorted(n for g in s.targets for n in g) == ["car", "road"]
    assert_masks_on(s, {"car": "red", "road": "green"})


def test_pascal_part_and_paco_names(tmp_path):
    fx.write_pascal_part(str(tmp_path))
    fx.write_paco_lvis(str(tmp_path))
    s = make(tmp_path, "sem_seg", sem_seg_data="pascal_part")[0]
    assert s.targets == [["the head of the dog"], ["dog torso"]]
    assert_masks_on(s, {"the head of the dog": "red", "dog torso": "green"})
    s = make(tmp_path, "sem_seg", sem_seg_data="paco_lvis")[0]
    assert s.targets == [["bow"], ["the handle of the mug"]]
    assert_masks_on(s, {"bow": "red", "the handle of the mug": "blue"})


REFER_NAMES = {v: k for k, v in fx.REFER_SENTENCES.items()}


@pytest.mark.parametrize("ds_name,split_by", [("refcoco", "unc"), ("refclef", "unc"), ("refcocog", "umd"), ("refcoco+", "unc")])
def test_refer_datasets(tmp_path, ds_name, split_by):
    fx.write_refer(str(tmp_path), ds_name, split_by)
    ds = make(tmp_path, "refer_seg", refer_seg_data=ds_name)
    source = ds.datasets[0].sources[0]
    assert len(source) == 1 and len(source.by_image[1]) == 3  # the val ref of image 2 is not in train
    s = ds[0]
    assert qa(s) == [
        [("<image>\nWhat is long blue box in this image? Please respond with segmentation mask.", f"Sure, the segmentation result is {S}.")],
        [("<image>\nWhat is red box on the left in this image? Please output segmentation mask.", f"Sure, {S}.")],
        [("<image>\nCan you segment the green box top right in this image?", f"Sure, {S}.")],
    ]
    assert_masks_on(s, REFER_NAMES)


def test_refer_multi_target(tmp_path):
    fx.write_refer(str(tmp_path))
    ds = make(tmp_path, "refer_seg", seed=3, refer_seg_data="refcoco", num_classes_per_sample=1, num_classes_per_question=3)
    s = ds[0]
    assert qa(s) == [[(
        "<image>\nCan you segment the red box on the left, long blue box and green box top right in this image?",
        f"Sure, they are {S}, {S} and {S}.",
    )]]
    assert_masks_on(s, REFER_NAMES)


def test_vqa_multi_turn_and_braces(tmp_path):
    fx.write_llava(str(tmp_path))
    s = make(tmp_path, "vqa")[0]
    assert qa(s) == [[
        ("<image>\nHow many boxes are there?", "There are three boxes {red, green, blue}."),
        ("Which one is the longest?", "The blue box."),
    ]]
    assert s.masks.shape == (0, fx.HEIGHT, fx.WIDTH) and s.targets == [[]]


def test_reason_seg_mask_with_ignore(tmp_path):
    fx.write_reason_seg(str(tmp_path))
    s = make(tmp_path, "reason_seg", explanatory=0.0)[0]
    assert qa(s) == [[(
        "<image>\nWhat is the box that looks like grass in this image? Please output segmentation mask.",
        f"Sure, the segmentation result is {S}.",
    )]]
    mask = s.masks[0]
    x0, y0 = fx.BOXES["green"][1][:2]
    assert (mask[y0 : y0 + 5, x0 : x0 + 5] == 255).all()  # the ignore polygon is drawn last (smaller)
    assert fx.iou((mask > 0).astype(np.uint8), fx.box_mask("green")) > 0.9
    assert set(np.unique(mask)) == {0, 1, 255}


def test_reason_seg_explanatory(tmp_path):
    fx.write_reason_seg(str(tmp_path))
    fx.write_json(str(tmp_path / "reason_seg" / "explanatory" / "train.json"),
                  [{"image": "r1.jpg", "query": "q", "outputs": "Grass is green {so} it is the green box."}])
    ds = make(tmp_path, "reason_seg", explanatory=1.0)
    s = ds[0]
    assert qa(s) == [[("<image>\nthe box that looks like grass", "Grass is green {so} it is the green box.")]]
    assert s.masks.shape[0] == 0


def test_muse_text_answers(tmp_path):
    fx.write_muse(str(tmp_path))
    ds = make(tmp_path, "multi_reason_seg")
    s = ds[0]
    assert qa(s) == [
        [("<image>\nWhich boxes are not blue? Please show the segmentation mask.", f"The green one {S} and the red one {S} are not blue.")],
        [("<image>\nWhich box is longest? Please highlight the answer with masks.", f"The long blue box {S}.")],
    ]
    assert s.source == "muse_train"
    assert_masks_on(s, {"the green box": "green", "the red box": "red", "the blue box": "blue"})


def test_muse_name_answers(tmp_path):
    fx.write_muse(str(tmp_path), text_answers=False)
    s = make(tmp_path, "multi_reason_seg", seed=3)[0]
    assert qa(s) == [
        [("<image>\nWhich boxes are not blue? Please output segmentation mask.", f"the green box is {S} and the red box is {S}.")],
        [("<image>\nWhich box is longest? Please output segmentation mask.", f"the blue box is {S}.")],
    ]
    assert_masks_on(s, {"the green box": "green", "the red box": "red", "the blue box": "blue"})


def test_muse_reads_dataset_dir_not_cwd(tmp_path, monkeypatch):
    fx.write_muse(str(tmp_path / "data"))
    monkeypatch.chdir(tmp_path)
    assert make(tmp_path / "data", "multi_reason_seg")[0].masks.shape[0] == 3


def test_expand_question_list_adds_templates(tmp_path):
    fx.write_ade20k(str(tmp_path), n=1)
    plain = make(tmp_path, "sem_seg", sem_seg_data="ade20k")
    expanded = make(tmp_path, "sem_seg", sem_seg_data="ade20k", use_expand_question_list=True)
    assert len(expanded.ctx.templates.short) == len(plain.ctx.templates.short) + 14
    questions = {c[0].question for i in range(40) for c in expanded[i].conversations}
    assert any(q.split("\n", 1)[1] not in {t.replace("{class_name}", n) for t in plain.ctx.templates.short for n in ADE_NAMES}
               for q in questions)
