"""reason_seg: ReasonSeg, ``reason_seg/ReasonSeg/{train,val,test}/*.jpg`` each with a same-name json.

The json: ``text`` (list of queries), ``is_sentence`` (long-question templates when true), ``shapes``
(``label`` target | ignore | flag, ``points`` polygon). Polygons are filled largest first: target = 1,
ignore = 255, flag is not drawn. Optional explanations: ``reason_seg/explanatory/train.json``
``[{image, query, outputs}]``; for those images, with probability ``explanatory`` the answer is the
explanation alone (no mask), otherwise half the time the answer is followed by it.
"""

from __future__ import annotations

import json
import os

import cv2
import numpy as np

from model.conversation import Turn
from model.losses import IGNORE_LABEL

from .errors import SkipItem, require_path
from .image_io import check_polygons, read_rgb
from .questions import image_question
from .sample import Sample, empty_masks
from .skips import SkipCounter
from .source import DataContext, TypeDataset, choose, parse_split_spec
from .templates import Templates, fill


def read_reason_json(path: str) -> dict:
    try:
        with open(path) as f:
            data = json.load(f)
    except (OSError, json.JSONDecodeError) as err:
        raise SkipItem("bad_annotation", f"{path}: {err}") from err
    if not isinstance(data.get("text"), list) or not data["text"] or not isinstance(data.get("shapes"), list):
        raise SkipItem("bad_annotation", f"{path}: needs a non-empty 'text' list and 'shapes'")
    return data


def reason_mask(data: dict, height: int, width: int, path: str) -> np.ndarray:
    """[H, W] uint8: 1 on target polygons, 255 on ignore polygons, 0 elsewhere."""
    polygons = []
    for shape in data["shapes"]:
        label = shape.get("label")
        if label == "flag":
            continue
        if label not in ("target", "ignore"):
            raise SkipItem("bad_annotation", f"{path}: unknown shape label {label!r}")
        points = np.asarray(shape.get("points", []), dtype=np.float64)
        if points.ndim != 2 or points.shape[1] != 2:
            raise SkipItem("bad_annotation", f"{path}: a shape's points are not [[x, y], ...]")
        check_polygons([points.reshape(-1).tolist()], height, width)
        area = cv2.contourArea(points.astype(np.float32))
        polygons.append((area, 1 if label == "target" else IGNORE_LABEL, points))
    mask = np.zeros((height, width), dtype=np.uint8)
    for _, value, points in sorted(polygons, key=lambda p: -p[0]):
        cv2.fillPoly(mask, [np.round(points).astype(np.int32)], int(value))
    if not (mask == 1).any():
        raise SkipItem("empty_mask", f"{path}: no target pixels")
    return mask


def reason_question(text: str, is_sentence: bool, templates: Templates, template_index: int) -> str:
    if is_sentence:
        return fill(templates.long[template_index % len(templates.long)], sent=text)
    return fill(templates.short[template_index % len(templates.short)], class_name=text.lower())


def list_reason_images(dataset_dir: str, split: str) -> list[str]:
    folder = require_path(
        os.path.join(dataset_dir, "reason_seg", "ReasonSeg", split), "ReasonSeg", f"the {split} images *.jpg with same-name *.json"
    )
    return sorted(os.path.join(folder, f) for f in os.listdir(folder) if f.lower().endswith(".jpg"))


class ReasonSegSource:
    def __init__(self, images: list[str], explanations: dict[str, str], ctx: DataContext, name: str = "ReasonSeg") -> None:
        self.name, self.images, self.explanations, self.ctx = name, images, explanations, ctx

    def __len__(self) -> int:
        return len(self.images)

    def build(self, index: int, rng: np.random.Generator) -> Sample:
        path = self.images[index]
        data = read_reason_json(os.path.splitext(path)[0] + ".json")
        image = read_rgb(path)
        height, width = image.shape[:2]
        mask = reason_mask(data, height, width, path)
        texts = choose(rng, [t for t in data["text"] if str(t).strip()], self.ctx.args.num_classes_per_sample)
        if not texts:
            raise SkipItem("bad_annotation", f"{path}: no query text")
        templates = self.ctx.templates
        explanation = self.explanations.get(os.path.basename(path))
        mode = "plain"
        if explanation is not None:
            mode = "text_only" if rng.random() < self.ctx.args.explanatory else ("explain" if rng.random() < 0.5 else "plain")
        conversations, targets, masks = [], [], []
        for text in texts:
            text = str(text).strip()
            if mode == "text_only":
                conversations.append([Turn(image_question(text), explanation)])
                targets.append([])
                continue
            answer = fill(templates.single[int(rng.integers(len(templates.single)))], seg=self.ctx.seg)
            if mode == "explain":
                question = text + " " + templates.explanatory[int(rng.integers(len(templates.explanatory)))]
                answer += " " + explanation
            else:
                question = reason_question(text, bool(data.get("is_sentence")), templates, int(rng.integers(1 << 30)))
            conversations.append([Turn(image_question(question), answer)])
            targets.append([text])
            masks.append(mask)
        stacked = np.stack(masks) if masks else empty_masks(height, width)
        return Sample(path, image, self.ctx.processor.preprocess(image), conversations, targets, stacked, self.name)


def load_explanations(dataset_dir: str) -> dict[str, str]:
    path = os.path.join(dataset_dir, "reason_seg", "explanatory", "train.json")
    if not os.path.isfile(path):
        return {}
    with open(path) as f:
        items = json.load(f)
    return {item["image"]: str(item["outputs"]) for item in items if "image" in item and "outputs" in item}


def reason_seg_dataset(dataset_dir: str, spec: str, ctx: DataContext, counter: SkipCounter) -> TypeDataset:
    images = [p for split in parse_split_spec(spec, "ReasonSeg") for p in list_reason_images(dataset_dir, split)]
    return TypeDataset("reason_seg", [ReasonSegSource(images, load_explanations(dataset_dir), ctx)], counter)
