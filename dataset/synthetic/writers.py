"""Write the synthetic world as a dataset tree in the real formats (the loaders read it unchanged).

Tree under ``out``:
``refer_seg/images/mscoco/images/train2014/COCO_train2014_*.jpg`` (every scene),
``refer_seg/refcoco/{refs(unc).p, instances.json}`` (train + val), ``muse/muse_{train,val,test_less,test_many}.json``,
``reason_seg/ReasonSeg/{train,val}/*.{jpg,json}`` + ``reason_seg/explanatory/train.json``,
``llava_dataset/llava_instruct_150k.json`` with images ``coco/train2017/*.jpg``,
``ade20k/{images,annotations}/training`` + ``ade20k/ade20k_classes.json``, and ``corpus.txt``.
"""

from __future__ import annotations

import json
import os
import pickle
from dataclasses import dataclass, field

import cv2
import numpy as np
from pycocotools import mask as mask_utils

from ..templates import template_texts
from .config import WorldConfig
from .language import group_questions, reason_query, referring_expressions, vqa_rounds
from .scene import Scene, Shape, generate_scene

SPLIT_CODES = {"train": 0, "val": 1, "test_less": 2, "test_many": 3}
COCO_DIR = os.path.join("refer_seg", "images", "mscoco", "images", "train2014")


def coco_file_name(image_id: int) -> str:
    return f"COCO_train2014_{image_id:012d}.jpg"


def encode_segmentation(mask: np.ndarray):
    """Polygons when the visible mask has no holes, else compressed RLE (json-ready)."""
    contours, hierarchy = cv2.findContours(mask, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE)
    has_holes = hierarchy is not None and (hierarchy[0][:, 3] >= 0).any()
    polygons = [c.reshape(-1).tolist() for c in contours if len(c) >= 3]
    if polygons and not has_holes:
        return polygons
    rle = mask_utils.encode(np.asfortranarray(mask))
    return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}


def bbox(mask: np.ndarray) -> list[float]:
    x, y, w, h = cv2.boundingRect(mask)
    return [float(x), float(y), float(w), float(h)]


@dataclass
class WorldWriter:
    out: str
    cfg: WorldConfig
    seed: int
    corpus: dict[str, None] = field(default_factory=dict)
    images: list[dict] = field(default_factory=list)
    annotations: list[dict] = field(default_factory=list)
    refs: list[dict] = field(default_factory=list)
    ann_ids: dict[tuple[int, int], int] = field(default_factory=dict)

    def text(self, *texts: str) -> None:
        for t in texts:
            self.corpus[t.replace(" {seg}", "")] = None

    def path(self, *parts: str) -> str:
        p = os.path.join(self.out, *parts)
        os.makedirs(os.path.dirname(p), exist_ok=True)
        return p

    def scene(self, split: str, index: int) -> tuple[int, Scene]:
        rng = np.random.default_rng([self.seed, SPLIT_CODES[split], index])
        min_shapes = 4 if split == "test_many" else None
        return SPLIT_CODES[split] * 1_000_000 + index + 1, generate_scene(rng, self.cfg, min_shapes), rng

    def write_image(self, jpeg: bytes, *parts: str) -> None:
        with open(self.path(*parts), "wb") as f:
            f.write(jpeg)

    def annotate(self, image_id: int, scene: Scene) -> None:
        kinds = list(self.cfg.kinds)
        self.images.append({"id": image_id, "file_name": coco_file_name(image_id), "height": scene.height, "width": scene.width})
        for i, shape in enumerate(scene.shapes):
            ann_id = len(self.annotations) + 1
            self.ann_ids[(image_id, i)] = ann_id
            self.annotations.append({
                "id": ann_id, "image_id": image_id, "category_id": kinds.index(shape.kind) + 1,
                "segmentation": encode_segmentation(shape.mask), "area": float(shape.area),
                "bbox": bbox(shape.mask), "iscrowd": 0,
            })

    def add_refs(self, image_id: int, scene: Scene, split: str, rng: np.random.Generator) -> None:
        lo, hi = self.cfg.refs_sentences
        for i, shape in enumerate(scene.shapes):
            exprs = referring_expressions(scene, shape)
            # refCOCO-style sentences carry no leading article ("large blue square", "leftmost star").
            chosen = [exprs[int(j)].removeprefix("the ") for j in rng.permutation(len(exprs))[: int(rng.integers(lo, hi + 1))]]
            self.text(*chosen)
            base = len(self.refs) * 10
            self.refs.append({
                "ref_id": len(self.refs) + 1, "ann_id": self.ann_ids[(image_id, i)], "image_id": image_id,
                "split": split, "category_id": list(self.cfg.kinds).index(shape.kind) + 1,
                "file_name": coco_file_name(image_id), "sent_ids": [base + j for j in range(len(chosen))],
                "sentences": [{"sent_id": base + j, "raw": s, "sent": s, "tokens": s.split()} for j, s in enumerate(chosen)],
            })

    def muse_item(self, image_id: int, scene: Scene, split: str, rng: np.random.Generator) -> dict | None:
        train = split == "train"
        no_target_rate = self.cfg.train_no_target_rate if train else self.cfg.no_target_rate
        questions = group_questions(rng, scene, list(self.cfg.colours), list(self.cfg.kinds), no_target_rate,
                                    combos=train and self.cfg.train_combo_questions)
        if split == "test_less":
            questions = [q for q in questions if len(q.targets) <= 2]
        elif split == "test_many":
            questions = [q for q in questions if len(q.targets) >= 3]
        lo, hi = self.cfg.muse_questions_per_image
        questions = [questions[int(j)] for j in rng.permutation(len(questions))[: int(rng.integers(lo, hi + 1))]]
        if not questions:
            return None
        index = {id(s): i for i, s in enumerate(scene.shapes)}
        kinds = list(self.cfg.kinds)

        def ann(shape: Shape) -> dict:
            a = self.annotations[self.ann_ids[(image_id, index[id(shape)])] - 1]
            return {"id": a["id"], "category_id": kinds.index(shape.kind) + 1, "category_name": shape.kind,
                    "rephrased_name": f"the {shape.name}", "bbox": a["bbox"], "segmentation": a["segmentation"]}

        for q in questions:
            self.text(q.question, q.answer)
        for shape in scene.shapes:
            self.text(f"the {shape.name}")
        return {
            "file_name": coco_file_name(image_id), "height": scene.height, "width": scene.width, "image_id": image_id,
            "ann_list": [ann(s) for s in scene.shapes],
            "questions": [q.question for q in questions],
            "answers": [[ann(s) for s in q.targets] for q in questions],
            "text_answers": [q.answer for q in questions],
        }

    def reason_item(self, image_id: int, scene: Scene, split: str, jpeg: bytes, rng: np.random.Generator) -> dict | None:
        hole_free = Scene(scene.image, [s for s in scene.shapes if isinstance(encode_segmentation(s.mask), list)])
        if not hole_free.shapes:
            return None
        query = reason_query(rng, Scene(scene.image, scene.shapes))
        if query is None or not isinstance(encode_segmentation(query.target.mask), list):
            return None
        polygons = encode_segmentation(query.target.mask)
        shapes = [{"label": "target", "points": np.asarray(p).reshape(-1, 2).tolist(), "shape_type": "polygon"} for p in polygons]
        name = f"synth_{image_id:08d}"
        self.write_image(jpeg, "reason_seg", "ReasonSeg", split, name + ".jpg")
        with open(self.path("reason_seg", "ReasonSeg", split, name + ".json"), "w") as f:
            f.write(json.dumps({"text": query.texts, "is_sentence": query.is_sentence, "shapes": shapes}))
        self.text(*query.texts, query.explanation)
        if split == "train" and rng.random() < self.cfg.explanatory_rate:
            return {"image": name + ".jpg", "query": query.texts[0], "outputs": query.explanation}
        return None

    def vqa_item(self, image_id: int, scene: Scene, jpeg: bytes, rng: np.random.Generator) -> dict:
        lo, hi = self.cfg.vqa_rounds
        rounds = vqa_rounds(rng, scene, list(self.cfg.colours), list(self.cfg.kinds), int(rng.integers(lo, hi + 1)),
                            self.cfg.vqa_presence_questions)
        file_name = f"{image_id:012d}.jpg"
        self.write_image(jpeg, "coco", "train2017", file_name)
        conversations = []
        for i, (q, a) in enumerate(rounds):
            self.text(q, a)
            conversations += [{"from": "human", "value": ("<image>\n" + q) if i == 0 else q}, {"from": "gpt", "value": a}]
        return {"id": f"{image_id:012d}", "image": file_name, "conversations": conversations}

    def ade_item(self, index: int, scene: Scene, jpeg: bytes, classes: list[str]) -> None:
        name = f"ADE_train_{index + 1:08d}"
        label = np.zeros((scene.height, scene.width), dtype=np.uint8)
        for shape in scene.shapes:
            label[shape.mask == 1] = classes.index(shape.short_name) + 1
        self.write_image(jpeg, "ade20k", "images", "training", name + ".jpg")
        cv2.imwrite(self.path("ade20k", "annotations", "training", name + ".png"), label)


def write_world(out: str, cfg: WorldConfig, seed: int = 0, n_train: int = 500, n_val: int = 50) -> dict[str, int]:
    """Write the synthetic dataset tree under ``out``; returns the number of items per file."""
    w = WorldWriter(out, cfg, seed)
    classes = [f"{c} {k}" for c in cfg.colours for k in cfg.kinds]
    muse: dict[str, list[dict]] = {s: [] for s in SPLIT_CODES}
    vqa, explanations = [], []
    counts = {"scenes": 0}
    for split, n in (("train", n_train), ("val", n_val), ("test_less", n_val), ("test_many", n_val)):
        for index in range(n):
            image_id, scene, rng = w.scene(split, index)
            ok, buf = cv2.imencode(".jpg", cv2.cvtColor(scene.image, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, cfg.jpeg_quality])
            jpeg = buf.tobytes()
            w.write_image(jpeg, COCO_DIR, coco_file_name(image_id))
            w.annotate(image_id, scene)
            counts["scenes"] += 1
            item = w.muse_item(image_id, scene, split, rng)
            if item is not None:
                muse[split].append(item)
            if split in ("train", "val"):
                w.add_refs(image_id, scene, split, rng)
                explanation = w.reason_item(image_id, scene, split, jpeg, rng)
                if explanation is not None:
                    explanations.append(explanation)
            if split == "train":
                vqa.append(w.vqa_item(image_id, scene, jpeg, rng))
                w.ade_item(index, scene, jpeg, classes)
    for split, items in muse.items():
        with open(w.path("muse", f"muse_{split}.json"), "w") as f:
            f.write(json.dumps(items))
        counts[f"muse_{split}"] = len(items)
    with open(w.path("refer_seg", "refcoco", "refs(unc).p"), "wb") as f:
        pickle.dump(w.refs, f, protocol=2)
    instances = {"images": w.images, "annotations": w.annotations,
                 "categories": [{"id": i + 1, "name": k, "supercategory": "shape"} for i, k in enumerate(cfg.kinds)]}
    with open(w.path("refer_seg", "refcoco", "instances.json"), "w") as f:
        f.write(json.dumps(instances))
    with open(w.path("llava_dataset", "llava_instruct_150k.json"), "w") as f:
        f.write(json.dumps(vqa))
    with open(w.path("reason_seg", "explanatory", "train.json"), "w") as f:
        f.write(json.dumps(explanations))
    with open(w.path("ade20k", "ade20k_classes.json"), "w") as f:
        f.write(json.dumps(classes))
    w.text(*classes, *template_texts(), *(t.replace("{class_name}", "").replace("{sent}", "").replace("{seg}", "").strip() for t in template_texts()))
    with open(w.path("corpus.txt"), "w") as f:
        f.write("\n".join(t for t in w.corpus if t.strip()) + "\n")
    counts.update(refs=len(w.refs), vqa=len(vqa), corpus_lines=len(w.corpus))
    return counts
