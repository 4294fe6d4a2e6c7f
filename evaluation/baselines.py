"""A floor for referring segmentation: the score of answering every expression with every object of its image.

A model that has not learned to read the expression can still learn where objects are; on scenes with a
few objects that alone scores a fair gIoU. A trained model must beat this floor, not just zero.
"""

from __future__ import annotations

import os
from collections import defaultdict

import numpy as np

from dataset.image_io import union_mask
from dataset.validation import ValDataset

from .metrics import IoUAccumulator


def every_object_baseline(val_set: ValDataset, limit: int | None = None) -> dict[str, float]:
    """gIoU / cIoU over the first ``limit`` images (all: None) of a refer validation set when each
    expression is answered with the union of all annotated objects of its image.

    ``val_set``: ``dataset.validation.build_val_dataset`` of a refCOCO-style set (refcoco, refcoco+,
    refcocog, refclef, grefcoco); the annotations come from its ``instances.json``.
    """
    if val_set.kind != "refer" or val_set.refer is None:
        raise ValueError(f"{val_set.name}: the every-object baseline needs a referring set (refcoco|unc|val, ...)")
    index = val_set.refer.index
    image_of_file = {info["file_name"]: image_id for image_id, info in index.images.items()}
    segmentations = defaultdict(list)
    for ann in index.annotations.values():
        segmentations[ann["image_id"]].append(ann["segmentation"])
    acc = IoUAccumulator()
    for i in range(min(len(val_set), limit or len(val_set))):
        sample = val_set[i]
        height, width = sample.image.shape[:2]
        image_id = image_of_file[os.path.relpath(sample.image_path, val_set.refer.image_root)]
        everything = union_mask(segmentations[image_id], height, width).astype(bool)
        acc.add(np.repeat(everything[None], sample.masks.shape[0], axis=0), sample.masks)
    return {"giou": acc.giou, "ciou": acc.ciou, "pairs": float(acc.num_pairs)}
