"""sem_seg: ADE20K, COCO-Stuff, Mapillary Vistas (label maps) and Pascal-Part, PACO-LVIS (COCO jsons).

On-disk layout under ``dataset_dir`` (the original's tree):

- ade20k: ``ade20k/images/training/*.jpg``, ``ade20k/annotations/training/*.png`` (0 = unlabelled,
  k = class k-1 of ``dataset/classes/ade20k_classes.json``; a ``ade20k/ade20k_classes.json`` in the
  dataset folder replaces that list, as the synthetic world's does).
- cocostuff: ``cocostuff/train2017/*.png`` (0-based class ids, 255 = unlabelled), images
  ``coco/train2017/*.jpg``; names ``dataset/classes/cocostuff_classes.txt``; classes with "-" in the
  name are not asked about.
- mapillary: ``mapillary/config_v2.0.json`` (``labels[].readable``), ``mapillary/training/v2.0/labels/*.png``,
  ``mapillary/training/images/*.jpg``.
- pascal_part: ``vlpart/pascal_part/train.json``, images ``vlpart/pascal_part/VOCdevkit/VOC2010/JPEGImages``.
- paco_lvis: ``vlpart/paco/annotations/paco_lvis_v1_train.json``, images ``coco/<file_name>``.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable

import numpy as np

from model.losses import IGNORE_LABEL

from .coco_index import CocoIndex
from .errors import SkipItem, require_path
from .image_io import decode_segmentation, read_label, read_rgb
from .questions import target_conversations
from .sample import Sample
from .skips import SkipCounter
from .source import DataContext, TypeDataset, choose

CLASSES_DIR = os.path.join(os.path.dirname(__file__), "classes")
SEM_SEG_NAMES = ("ade20k", "cocostuff", "mapillary", "pascal_part", "paco_lvis")


def ade20k_class_names(dataset_dir: str) -> list[str]:
    override = os.path.join(dataset_dir, "ade20k", "ade20k_classes.json")
    path = override if os.path.isfile(override) else os.path.join(CLASSES_DIR, "ade20k_classes.json")
    with open(path) as f:
        return list(json.load(f))


def cocostuff_class_names() -> list[str]:
    """The 182 COCO-Stuff names, index = label value (the file's first line is 'unlabeled')."""
    with open(os.path.join(CLASSES_DIR, "cocostuff_classes.txt")) as f:
        lines = [line.strip() for line in f if line.strip()]
    return [line.split(": ", 1)[-1] for line in lines[1:]]


def build_conversations(names: list[str], masks: list[np.ndarray], ctx: DataContext, rng: np.random.Generator):
    """Questions over ``names`` (already sampled) and the masks in seg-group order."""
    conversations, groups = target_conversations(
        names, ctx.seg, ctx.templates, rng, ctx.args.num_classes_per_sample, ctx.args.num_classes_per_question
    )
    targets = [[names[i] for i in g] for g in groups]
    ordered = [masks[i] for g in groups for i in g]
    return conversations, targets, ordered


class LabelMapSource:
    """A dataset of (image, label map) pairs; ``to_class`` maps raw labels to class ids (255 = ignore)."""

    def __init__(
        self,
        name: str,
        pairs: list[tuple[str, str]],
        class_names: list[str],
        to_class: Callable[[np.ndarray], np.ndarray],
        ctx: DataContext,
    ) -> None:
        self.name, self.pairs, self.class_names, self.to_class, self.ctx = name, pairs, class_names, to_class, ctx

    def __len__(self) -> int:
        return len(self.pairs)

    def build(self, index: int, rng: np.random.Generator) -> Sample:
        image_path, label_path = self.pairs[index]
        image = read_rgb(image_path)
        label = self.to_class(read_label(label_path).astype(np.int64))
        if label.shape != image.shape[:2]:
            raise SkipItem("bad_annotation", f"{label_path} {label.shape} vs image {image.shape[:2]}")
        present = [int(c) for c in np.unique(label) if c != IGNORE_LABEL and c < len(self.class_names)]
        if not present:
            raise SkipItem("empty_mask", f"{label_path} has no labelled class")
        chosen = choose(rng, present, self.ctx.max_targets)
        names = [self.class_names[c] for c in chosen]
        masks = [(label == c).astype(np.uint8) for c in chosen]
        conversations, targets, ordered = build_conversations(names, masks, self.ctx, rng)
        return Sample(image_path, image, self.ctx.processor.preprocess(image), conversations, targets,
                      np.stack(ordered), self.name)


def _pairs(name: str, image_dir: str, label_dir: str, image_ext: str, counter: SkipCounter) -> list[tuple[str, str]]:
    require_path(image_dir, name, f"the training images (*{image_ext})")
    require_path(label_dir, name, "the label maps (*.png, one per image, same file stem)")
    labels = {os.path.splitext(f)[0] for f in os.listdir(label_dir) if f.endswith(".png")}
    pairs, missing = [], 0
    for f in sorted(os.listdir(image_dir)):
        stem, ext = os.path.splitext(f)
        if ext.lower() != image_ext:
            continue
        if stem in labels:
            pairs.append((os.path.join(image_dir, f), os.path.join(label_dir, stem + ".png")))
        else:
            missing += 1
    if missing:
        counter.record(name, "bad_annotation", missing)
    return pairs


def ade20k_source(dataset_dir: str, ctx: DataContext, counter: SkipCounter) -> LabelMapSource:
    root = require_path(os.path.join(dataset_dir, "ade20k"), "ade20k", "images/training/*.jpg and annotations/training/*.png")
    pairs = _pairs("ade20k", os.path.join(root, "images", "training"), os.path.join(root, "annotations", "training"), ".jpg", counter)

    def to_class(label: np.ndarray) -> np.ndarray:
        return np.where(label == 0, IGNORE_LABEL, label - 1)

    return LabelMapSource("ade20k", pairs, ade20k_class_names(dataset_dir), to_class, ctx)


def cocostuff_source(dataset_dir: str, ctx: DataContext, counter: SkipCounter) -> LabelMapSource:
    label_dir = os.path.join(dataset_dir, "cocostuff", "train2017")
    image_dir = os.path.join(dataset_dir, "coco", "train2017")
    require_path(label_dir, "cocostuff", "the COCO-Stuff label maps train2017/*.png")
    pairs = _pairs("cocostuff", image_dir, label_dir, ".jpg", counter)
    names = cocostuff_class_names()
    ignored = np.array(["-" in n for n in names] + [True] * (256 - len(names)))

    def to_class(label: np.ndarray) -> np.ndarray:
        clipped = np.clip(label, 0, 255)
        return np.where(ignored[clipped], IGNORE_LABEL, clipped)

    return LabelMapSource("cocostuff", pairs, names, to_class, ctx)


def mapillary_source(dataset_dir: str, ctx: DataContext, counter: SkipCounter) -> LabelMapSource:
    root = require_path(os.path.join(dataset_dir, "mapillary"), "mapillary", "config_v2.0.json and training/")
    config = require_path(os.path.join(root, "config_v2.0.json"), "mapillary", "the Vistas v2.0 label config")
    with open(config) as f:
        labels = json.load(f)["labels"]
    names = [label["readable"].lower() for label in labels]
    ignored = np.array([n == "unlabeled" for n in names] + [True] * (65536 - len(names)))
    pairs = _pairs(
        "mapillary", os.path.join(root, "training", "images"), os.path.join(root, "training", "v2.0", "labels"), ".jpg", counter
    )

    def to_class(label: np.ndarray) -> np.ndarray:
        return np.where(ignored[label], IGNORE_LABEL, label)

    return LabelMapSource("mapillary", pairs, names, to_class, ctx)


def _strip_lvis_suffix(name: str) -> str:
    return re.sub(r"_\([^)]*\)", "", name).replace("_", " ").strip()


class CocoPartSource:
    """Pascal-Part / PACO-LVIS: COCO-format json; a category "obj:part" is named "obj part" or "the part of the obj"."""

    def __init__(self, name: str, index: CocoIndex, image_root: str, ctx: DataContext, strip_suffix: bool) -> None:
        self.name, self.index, self.image_root, self.ctx, self.strip_suffix = name, index, image_root, ctx, strip_suffix
        self.image_ids = sorted(i for i, anns in index.anns_by_image.items() if anns and i in index.images)

    def __len__(self) -> int:
        return len(self.image_ids)

    def category_name(self, cat_id: int, rng: np.random.Generator) -> str:
        raw = self.index.categories[cat_id]["name"]
        clean = _strip_lvis_suffix if self.strip_suffix else (lambda s: s.replace("_", " "))
        if ":" in raw:
            obj, part = (clean(p) for p in raw.split(":", 1))
            return f"{obj} {part}" if rng.random() < 0.5 else f"the {part} of the {obj}"
        return clean(raw)

    def build(self, index: int, rng: np.random.Generator) -> Sample:
        info = self.index.images[self.image_ids[index]]
        path = os.path.join(self.image_root, info["file_name"])
        image = read_rgb(path)
        height, width = image.shape[:2]
        by_cat: dict[int, np.ndarray] = {}
        for ann_id in self.index.anns_by_image[info["id"]]:
            ann = self.index.annotations[ann_id]
            if ann["category_id"] not in self.index.categories:
                raise SkipItem("bad_annotation", f"unknown category {ann['category_id']}")
            mask = decode_segmentation(ann["segmentation"], height, width)
            cat = ann["category_id"]
            by_cat[cat] = by_cat[cat] | mask if cat in by_cat else mask
        cats = [c for c in sorted(by_cat) if by_cat[c].any()]
        if not cats:
            raise SkipItem("empty_mask", f"{path}: all annotations are empty")
        chosen = choose(rng, cats, self.ctx.max_targets)
        names = [self.category_name(c, rng) for c in chosen]
        conversations, targets, ordered = build_conversations(names, [by_cat[c] for c in chosen], self.ctx, rng)
        return Sample(path, image, self.ctx.processor.preprocess(image), conversations, targets, np.stack(ordered), self.name)


def pascal_part_source(dataset_dir: str, ctx: DataContext, counter: SkipCounter) -> CocoPartSource:
    root = os.path.join(dataset_dir, "vlpart", "pascal_part")
    ann = require_path(os.path.join(root, "train.json"), "pascal_part", "the COCO-format part annotations train.json")
    images = require_path(os.path.join(root, "VOCdevkit", "VOC2010", "JPEGImages"), "pascal_part", "the VOC2010 JPEG images")
    return CocoPartSource("pascal_part", CocoIndex.from_json(ann), images, ctx, strip_suffix=False)


def paco_lvis_source(dataset_dir: str, ctx: DataContext, counter: SkipCounter) -> CocoPartSource:
    ann = require_path(
        os.path.join(dataset_dir, "vlpart", "paco", "annotations", "paco_lvis_v1_train.json"),
        "paco_lvis",
        "the PACO-LVIS train annotations (COCO format)",
    )
    images = require_path(os.path.join(dataset_dir, "coco"), "paco_lvis", "the COCO images (train2017/, val2017/)")
    return CocoPartSource("paco_lvis", CocoIndex.from_json(ann), images, ctx, strip_suffix=True)


SEM_SEG_BUILDERS = {
    "ade20k": ade20k_source,
    "cocostuff": cocostuff_source,
    "mapillary": mapillary_source,
    "pascal_part": pascal_part_source,
    "paco_lvis": paco_lvis_source,
}


def sem_seg_dataset(dataset_dir: str, names: list[str], ctx: DataContext, counter: SkipCounter) -> TypeDataset:
    unknown = [n for n in names if n not in SEM_SEG_BUILDERS]
    if unknown:
        raise ValueError(f"--sem_seg_data: unknown datasets {unknown}; choose from {list(SEM_SEG_BUILDERS)}")
    return TypeDataset("sem_seg", [SEM_SEG_BUILDERS[n](dataset_dir, ctx, counter) for n in names], counter)
