"""refer_seg: refCLEF, refCOCO, refCOCO+, refCOCOg and gRefCOCO (several or zero targets per sentence).

All sentences of an image's training refs are pooled; up to num_classes_per_sample x
num_classes_per_question of them are asked about (see ``dataset.questions``). A gRefCOCO sentence with
several objects gets their union as its mask; one with none gets an all-zero mask.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from .errors import SkipItem
from .image_io import read_rgb, union_mask
from .questions import target_conversations
from .refer_annotations import REFER_DATASETS, Expression, ReferData, load_refer
from .sample import Sample
from .skips import SkipCounter
from .source import DataContext, TypeDataset, choose


def expression_mask(data: ReferData, expr: Expression, image: np.ndarray, allow_empty: bool) -> np.ndarray:
    """[H, W] uint8 {0, 1}: the union of the expression's annotations."""
    height, width = image.shape[:2]
    segs = []
    for ann_id in expr.ann_ids:
        ann = data.index.annotations.get(ann_id)
        if ann is None:
            raise SkipItem("bad_annotation", f"{data.name}: annotation {ann_id} is not in instances.json")
        segs.append(ann["segmentation"])
    mask = union_mask(segs, height, width)
    if not allow_empty and not mask.any():
        raise SkipItem("empty_mask", f"{data.name}: '{expr.sentence}' has an empty mask")
    return mask


def check_size(data: ReferData, image_id: int, image: np.ndarray) -> None:
    info = data.index.images[image_id]
    if "height" in info and "width" in info and (info["height"], info["width"]) != image.shape[:2]:
        raise SkipItem("bad_annotation", f"{data.image_path(image_id)} size differs from instances.json")


class ReferSource:
    def __init__(self, data: ReferData, ctx: DataContext, split: str = "train") -> None:
        self.name, self.data, self.ctx = data.name, data, ctx
        self.by_image = data.expressions_by_image(split)
        self.image_ids = sorted(self.by_image)
        self.allow_empty = data.name == "grefcoco"

    def __len__(self) -> int:
        return len(self.image_ids)

    def keep_expressions(self, keep: Callable[[Expression], bool]) -> None:
        """Drop every expression ``keep`` refuses, and the images left without one."""
        self.by_image = {image_id: kept for image_id, exprs in self.by_image.items() if (kept := [e for e in exprs if keep(e)])}
        self.image_ids = sorted(self.by_image)

    def build(self, index: int, rng: np.random.Generator) -> Sample:
        image_id = self.image_ids[index]
        path = self.data.image_path(image_id)
        image = read_rgb(path)
        check_size(self.data, image_id, image)
        exprs = choose(rng, self.by_image[image_id], self.ctx.max_targets)
        masks = [expression_mask(self.data, e, image, self.allow_empty) for e in exprs]
        names = [e.sentence for e in exprs]
        conversations, groups = target_conversations(
            names, self.ctx.seg, self.ctx.templates, rng, self.ctx.args.num_classes_per_sample, self.ctx.args.num_classes_per_question
        )
        targets = [[names[i] for i in g] for g in groups]
        ordered = np.stack([masks[i] for g in groups for i in g])
        return Sample(path, image, self.ctx.processor.preprocess(image), conversations, targets, ordered, self.name)


def refer_seg_dataset(dataset_dir: str, names: list[str], ctx: DataContext, counter: SkipCounter) -> TypeDataset:
    unknown = [n for n in names if n not in REFER_DATASETS]
    if unknown:
        raise ValueError(f"--refer_seg_data: unknown datasets {unknown}; choose from {list(REFER_DATASETS)}")
    return TypeDataset("refer_seg", [ReferSource(load_refer(dataset_dir, n), ctx) for n in names], counter)
