"""multi_reason_seg: MUSE, ``dataset_dir/muse/muse_{train,val,test_less,test_many}.json``.

One json item per image: ``file_name`` (a COCO train2014 image under
``refer_seg/images/mscoco/images/train2014``) or ``coco_url`` (train2017/val2017, mapped to
``refer_seg/images/mscoco/images/{train2017,val2017}``), ``height``, ``width``, ``ann_list``,
``questions``, ``answers[q]`` (instances: ``category_name``, optional ``rephrased_name``, ``bbox``,
``segmentation``) and optional ``text_answers[q]`` with ``{seg}`` after each target, in the order of
``answers[q]``. Every question of the image is asked. A question whose ``{seg}`` count differs from its
answers, whose polygons leave the image or whose masks are empty is skipped and counted.
"""

from __future__ import annotations

import json
import os

import numpy as np
from pycocotools import mask as mask_utils

from model.conversation import Turn

from .errors import SkipItem, require_path
from .image_io import check_image_size, check_polygons, decode_segmentation, read_rgb
from .questions import image_question
from .sample import Sample
from .skips import SkipCounter
from .source import DataContext, TypeDataset, parse_split_spec
from .templates import Templates, fill, join_names

MUSE_SPLITS = ("train", "val", "test_less", "test_many")
SEG_PLACEHOLDER = "{seg}"


def muse_json_path(dataset_dir: str, split: str) -> str:
    if split not in MUSE_SPLITS:
        raise ValueError(f"unknown MUSE split '{split}'; choose from {MUSE_SPLITS}")
    return require_path(
        os.path.join(dataset_dir, "muse", f"muse_{split}.json"), f"MultiReasonSeg|{split}", "the MUSE json (one item per image)"
    )


def load_muse(dataset_dir: str, split: str) -> list[dict]:
    with open(muse_json_path(dataset_dir, split)) as f:
        items = json.load(f)
    if not isinstance(items, list):
        raise ValueError(f"{muse_json_path(dataset_dir, split)}: expected a json list of image items")
    return items


def muse_image_path(dataset_dir: str, item: dict) -> str:
    base = os.path.join(dataset_dir, "refer_seg", "images", "mscoco", "images")
    if item.get("file_name"):
        return os.path.join(base, "train2014", item["file_name"])
    url = str(item.get("coco_url", ""))
    for split in ("train2017", "val2017"):
        if split in url:
            return os.path.join(base, split, url.rsplit("/", 1)[-1])
    raise SkipItem("bad_annotation", "item has neither file_name nor a train2017/val2017 coco_url")


def target_name(ann: dict, rng: np.random.Generator | None) -> str:
    """rephrased_name (90% of the time in training, always in validation) if present, else category_name."""
    rephrased = ann.get("rephrased_name")
    if rephrased and (rng is None or rng.random() < 0.9):
        return str(rephrased)
    return str(ann.get("category_name", "object"))


def question_problem(item: dict, q: int) -> str | None:
    """Why question ``q`` of ``item`` is unusable (a skip reason), or None; checks without decoding masks."""
    answers = item["answers"][q] if q < len(item.get("answers", [])) else None
    if not isinstance(answers, list):
        return "target_count_mismatch"
    text_answers = item.get("text_answers")
    if text_answers is not None:
        if q >= len(text_answers) or str(text_answers[q]).count(SEG_PLACEHOLDER) != len(answers):
            return "target_count_mismatch"
    elif not answers:
        return "bad_annotation"
    height, width = int(item.get("height", 0)), int(item.get("width", 0))
    for ann in answers:
        seg = ann.get("segmentation") if isinstance(ann, dict) else None
        if seg is None:
            return "bad_annotation"
        if isinstance(seg, list):
            try:
                check_polygons(seg, height, width)
            except SkipItem as skip:
                return skip.reason
            rle = mask_utils.merge(mask_utils.frPyObjects(seg, height, width))
        elif isinstance(seg, dict) and "counts" in seg:
            rle = mask_utils.frPyObjects(seg, height, width) if isinstance(seg["counts"], list) else seg
        else:
            return "bad_annotation"
        if mask_utils.area(rle) == 0:
            return "empty_mask"
    return None


def muse_question(text: str, templates: Templates, template_index: int = 0) -> str:
    """A MUSE question as the model is asked it: ``text`` in long template ``template_index`` (training draws
    one at random; validation and the demo's examples take the first, "... Please respond with segmentation mask.")."""
    return fill(templates.long[template_index], sent=str(text).strip())


def muse_answer(item: dict, q: int, seg: str, ctx: DataContext, rng: np.random.Generator) -> tuple[str, list[str]]:
    """The answer text (seg groups in ``answers[q]`` order) and the target names."""
    anns = item["answers"][q]
    names = [target_name(a, rng) for a in anns]
    text_answers = item.get("text_answers")
    if text_answers is not None:
        return seg.join(str(text_answers[q]).split(SEG_PLACEHOLDER)), names
    if len(names) == 1:
        return f"{names[0]} is {seg}.", names
    if rng.random() < 0.5:
        return join_names([f"{n} is {seg}" for n in names]) + ".", names
    template = ctx.templates.multi_named[int(rng.integers(len(ctx.templates.multi_named)))]
    return fill(template, class_name=join_names(names), seg=join_names([seg] * len(names))), names


def question_masks(anns: list[dict], height: int, width: int) -> list[np.ndarray]:
    return [decode_segmentation(a["segmentation"], height, width) for a in anns]


class MuseSource:
    def __init__(self, name: str, dataset_dir: str, items: list[dict], ctx: DataContext, counter: SkipCounter) -> None:
        self.name, self.dataset_dir, self.items, self.ctx, self.counter = name, dataset_dir, items, ctx, counter

    def __len__(self) -> int:
        return len(self.items)

    def build(self, index: int, rng: np.random.Generator) -> Sample:
        item = self.items[index]
        if not isinstance(item.get("questions"), list) or not isinstance(item.get("answers"), list):
            raise SkipItem("bad_annotation", "item without 'questions' and 'answers' lists")
        valid = []
        for q in range(len(item["questions"])):
            problem = question_problem(item, q)
            if problem is None:
                valid.append(q)
            else:
                self.counter.record(self.name, problem)
        if not valid:
            raise SkipItem("bad_annotation", "no usable question")
        path = muse_image_path(self.dataset_dir, item)
        image = read_rgb(path)
        height, width = int(item["height"]), int(item["width"])
        check_image_size(image, height, width, path)
        conversations, targets, masks = [], [], []
        for q in valid:
            question = muse_question(item["questions"][q], self.ctx.templates, int(rng.integers(len(self.ctx.templates.long))))
            answer, names = muse_answer(item, q, self.ctx.seg, self.ctx, rng)
            conversations.append([Turn(image_question(question), answer)])
            targets.append(names)
            masks.extend(question_masks(item["answers"][q], height, width))
        stacked = np.stack(masks) if masks else np.zeros((0, height, width), dtype=np.uint8)
        return Sample(path, image, self.ctx.processor.preprocess(image), conversations, targets, stacked, self.name)


def multi_reason_seg_dataset(dataset_dir: str, spec: str, ctx: DataContext, counter: SkipCounter) -> TypeDataset:
    """``spec`` is ``"MultiReasonSeg|train"`` (several splits joined with commas)."""
    sources = [
        MuseSource(f"muse_{split}", dataset_dir, load_muse(dataset_dir, split), ctx, counter)
        for split in parse_split_spec(spec, "MultiReasonSeg")
    ]
    return TypeDataset("multi_reason_seg", sources, counter)
