"""Our reader of the REFER annotations (refCLEF, refCOCO, refCOCO+, refCOCOg) and gRefCOCO.

Layout under ``dataset_dir/refer_seg``: ``<ds>/refs(<splitBy>).p`` (a pickled list of refs: ``ref_id``,
``ann_id``, ``image_id``, ``split``, ``sentences[{sent, raw, ...}]``) and ``<ds>/instances.json``
(COCO format); gRefCOCO has ``grefcoco/grefs(unc).json`` (``ann_id`` a list, ``[-1]`` or
``no_target`` for none). Images: ``images/saiapr_tc-12`` (refclef) or ``images/mscoco/images/train2014``.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

from .coco_index import CocoIndex
from .errors import require_path
from .safe_pickle import load_plain_pickle

REFER_DATASETS = ("refclef", "refcoco", "refcoco+", "refcocog", "grefcoco")
DEFAULT_SPLIT_BY = {"refclef": "unc", "refcoco": "unc", "refcoco+": "unc", "refcocog": "umd", "grefcoco": "unc"}


@dataclass
class Expression:
    """One referring sentence and the annotation ids it refers to (empty: no target)."""

    sentence: str
    ann_ids: list[int]


@dataclass
class ReferData:
    name: str
    refs: list[dict]
    index: CocoIndex
    image_root: str

    def image_path(self, image_id: int) -> str:
        return os.path.join(self.image_root, self.index.images[image_id]["file_name"])

    def expressions_by_image(self, split: str) -> dict[int, list[Expression]]:
        """image id -> its expressions of ``split`` (in file order)."""
        out: dict[int, list[Expression]] = {}
        for ref in self.refs:
            if ref.get("split") != split or ref.get("image_id") not in self.index.images:
                continue
            ann = ref.get("ann_id")
            ann_ids = [a for a in (ann if isinstance(ann, list) else [ann]) if a is not None and a != -1]
            if ref.get("no_target"):
                ann_ids = []
            for sent in ref.get("sentences", []):
                text = sent.get("sent") or sent.get("raw") or ""
                if text.strip():
                    out.setdefault(ref["image_id"], []).append(Expression(text.strip(), ann_ids))
        return out


def load_refer(dataset_dir: str, ds: str, split_by: str | None = None) -> ReferData:
    """Read one REFER dataset (or gRefCOCO) from ``dataset_dir/refer_seg``."""
    if ds not in REFER_DATASETS:
        raise ValueError(f"unknown referring dataset '{ds}'; choose from {REFER_DATASETS}")
    split_by = split_by or DEFAULT_SPLIT_BY[ds]
    root = os.path.join(dataset_dir, "refer_seg")
    folder = require_path(os.path.join(root, ds), ds, f"refs({split_by}).p (or grefs({split_by}).json) and instances.json")
    if ds == "grefcoco":
        ref_file = require_path(os.path.join(folder, f"grefs({split_by}).json"), ds, "the gRefCOCO expressions (json list)")
        with open(ref_file) as f:
            refs = json.load(f)
    else:
        ref_file = require_path(os.path.join(folder, f"refs({split_by}).p"), ds, "the REFER expressions (pickled list of refs)")
        refs = load_plain_pickle(ref_file)
    if not isinstance(refs, list) or not all(isinstance(r, dict) for r in refs):
        raise ValueError(f"{ref_file}: expected a list of ref dicts")
    instances = require_path(os.path.join(folder, "instances.json"), ds, "the COCO-format instances.json")
    image_root = os.path.join(root, "images", "saiapr_tc-12" if ds == "refclef" else os.path.join("mscoco", "images", "train2014"))
    require_path(image_root, ds, "the images the expressions refer to")
    return ReferData(ds, refs, CocoIndex.from_json(instances), image_root)
