"""A small index over a COCO-format instances json (images, annotations by image, categories)."""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass, field


@dataclass
class CocoIndex:
    images: dict[int, dict] = field(default_factory=dict)
    annotations: dict[int, dict] = field(default_factory=dict)
    anns_by_image: dict[int, list[int]] = field(default_factory=lambda: defaultdict(list))
    categories: dict[int, dict] = field(default_factory=dict)

    @classmethod
    def from_json(cls, path: str) -> "CocoIndex":
        with open(path) as f:
            data = json.load(f)
        return cls.from_dict(data, path)

    @classmethod
    def from_dict(cls, data: dict, path: str = "<instances>") -> "CocoIndex":
        for key in ("images", "annotations", "categories"):
            if key not in data:
                raise ValueError(f"{path}: a COCO instances file needs the key '{key}'")
        index = cls()
        index.images = {img["id"]: img for img in data["images"]}
        index.categories = {cat["id"]: cat for cat in data["categories"]}
        for ann in data["annotations"]:
            index.annotations[ann["id"]] = ann
            index.anns_by_image[ann["image_id"]].append(ann["id"])
        return index
