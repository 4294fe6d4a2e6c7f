"""Small dataset trees in each real on-disk format, written by the tests (no checked-in binaries).

Every image is 64 x 48 (W x H) with up to three non-overlapping coloured boxes; ``BOXES`` gives each
box's pixel rectangle so a test can check that a mask lands on the right object.
"""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np

REPO = Path(__file__).resolve().parent.parent
WIDTH, HEIGHT = 64, 48
# name -> (RGB colour, (x0, y0, x1, y1) exclusive), non-overlapping
BOXES = {
    "red": ((220, 30, 30), (4, 4, 20, 20)),
    "green": ((30, 200, 30), (30, 6, 52, 26)),
    "blue": ((30, 30, 220), (8, 30, 60, 44)),
}


def box_mask(name: str) -> np.ndarray:
    x0, y0, x1, y1 = BOXES[name][1]
    m = np.zeros((HEIGHT, WIDTH), dtype=np.uint8)
    m[y0:y1, x0:x1] = 1
    return m


def box_polygon(name: str) -> list[float]:
    x0, y0, x1, y1 = BOXES[name][1]
    return [float(x0), float(y0), float(x1), float(y0), float(x1), float(y1), float(x0), float(y1)]


def iou(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a == 1, b == 1
    return float((a & b).sum() / max(1, (a | b).sum()))


def write_image(path: str, names=("red", "green", "blue")) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    img = np.full((HEIGHT, WIDTH, 3), 128, dtype=np.uint8)
    for n in names:
        colour, (x0, y0, x1, y1) = BOXES[n]
        img[y0:y1, x0:x1] = colour
    ok = cv2.imwrite(path, cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
    assert ok


def write_label(path: str, values: dict[str, int], background: int) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    label = np.full((HEIGHT, WIDTH), background, dtype=np.uint8)
    for n, v in values.items():
        label[box_mask(n) == 1] = v
    assert cv2.imwrite(path, label)


def write_json(path: str, data) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump(data, f)


# ADE20K: label k = class k-1 of the shipped list; 21 = car, 5 = tree, 13 = person.
ADE_LABELS = {"red": 21, "green": 5, "blue": 13}


def write_ade20k(root: str, n: int = 2) -> None:
    for i in range(n):
        name = f"ADE_train_{i + 1:08d}"
        write_image(os.path.join(root, "ade20k", "images", "training", name + ".jpg"))
        write_label(os.path.join(root, "ade20k", "annotations", "training", name + ".png"), ADE_LABELS, 0)


# COCO-Stuff: 0-based ids; 0 person, 2 car, 171 = wall-brick (a "-" class, never asked about).
COCOSTUFF_LABELS = {"red": 0, "green": 2, "blue": 171}


def write_cocostuff(root: str) -> None:
    write_image(os.path.join(root, "coco", "train2017", "000000000001.jpg"))
    write_label(os.path.join(root, "cocostuff", "train2017", "000000000001.png"), COCOSTUFF_LABELS, 255)


def write_mapillary(root: str) -> None:
    write_json(os.path.join(root, "mapillary", "config_v2.0.json"),
               {"labels": [{"readable": "Road"}, {"readable": "Car"}, {"readable": "Unlabeled"}]})
    write_image(os.path.join(root, "mapillary", "training", "images", "m1.jpg"))
    write_label(os.path.join(root, "mapillary", "training", "v2.0", "labels", "m1.png"), {"red": 1, "green": 0}, 2)


def coco_instances(file_name: str, anns: list[tuple[str, int]], categories: list[dict]) -> dict:
    return {
        "images": [{"id": 1, "file_name": file_name, "height": HEIGHT, "width": WIDTH}],
        "annotations": [
            {"id": i + 1, "image_id": 1, "category_id": cat, "segmentation": [box_polygon(box)], "iscrowd": 0,
             "bbox": [BOXES[box][1][0], BOXES[box][1][1], BOXES[box][1][2] - BOXES[box][1][0], BOXES[box][1][3] - BOXES[box][1][1]],
             "area": float(box_mask(box).sum())}
            for i, (box, cat) in enumerate(anns)
        ],
        "categories": categories,
    }


def write_pascal_part(root: str) -> None:
    base = os.path.join(root, "vlpart", "pascal_part")
    write_image(os.path.join(base, "VOCdevkit", "VOC2010", "JPEGImages", "2008_000001.jpg"))
    write_json(os.path.join(base, "train.json"), coco_instances(
        "2008_000001.jpg", [("red", 1), ("green", 2)], [{"id": 1, "name": "dog:head"}, {"id": 2, "name": "dog:torso"}]))


def write_paco_lvis(root: str) -> None:
    write_image(os.path.join(root, "coco", "train2017", "000000000002.jpg"))
    write_json(os.path.join(root, "vlpart", "paco", "annotations", "paco_lvis_v1_train.json"), coco_instances(
        "train2017/000000000002.jpg", [("red", 1), ("blue", 2)], [{"id": 1, "name": "bow_(weapon)"}, {"id": 2, "name": "mug:handle"}]))


REFER_SENTENCES = {"red": "red box on the left", "green": "green box top right", "blue": "long blue box"}


def write_refer(root: str, ds: str = "refcoco", split_by: str = "unc") -> None:
    image_dir = "saiapr_tc-12" if ds == "refclef" else os.path.join("mscoco", "images", "train2014")
    file_name = "COCO_train2014_000000000001.jpg"
    write_image(os.path.join(root, "refer_seg", "images", image_dir, file_name))
    write_image(os.path.join(root, "refer_seg", "images", image_dir, "COCO_train2014_000000000002.jpg"), ("red", "blue"))
    instances = coco_instances(file_name, [("red", 1), ("green", 1), ("blue", 1)], [{"id": 1, "name": "box"}])
    instances["images"].append({"id": 2, "file_name": "COCO_train2014_000000000002.jpg", "height": HEIGHT, "width": WIDTH})
    instances["annotations"].append({"id": 4, "image_id": 2, "category_id": 1, "segmentation": [box_polygon("blue")], "iscrowd": 0})
    refs = [
        {"ref_id": i + 1, "ann_id": i + 1, "image_id": 1, "split": "train", "category_id": 1,
         "sentences": [{"sent": REFER_SENTENCES[box], "raw": REFER_SENTENCES[box], "sent_id": i}]}
        for i, box in enumerate(("red", "green", "blue"))
    ]
    refs.append({"ref_id": 4, "ann_id": 4, "image_id": 2, "split": "val", "category_id": 1,
                 "sentences": [{"sent": "blue box", "raw": "blue box", "sent_id": 10}, {"sent": "the long one", "raw": "the long one", "sent_id": 11}]})
    folder = os.path.join(root, "refer_seg", ds)
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, f"refs({split_by}).p"), "wb") as f:
        pickle.dump(refs, f, protocol=2)
    write_json(os.path.join(folder, "instances.json"), instances)


def write_grefcoco(root: str) -> None:
    file_name = "COCO_train2014_000000000001.jpg"
    write_image(os.path.join(root, "refer_seg", "images", "mscoco", "images", "train2014", file_name))
    write_json(os.path.join(root, "refer_seg", "grefcoco", "instances.json"),
               coco_instances(file_name, [("red", 1), ("green", 1), ("blue", 1)], [{"id": 1, "name": "box"}]))
    write_json(os.path.join(root, "refer_seg", "grefcoco", "grefs(unc).json"), [
        {"ref_id": 1, "ann_id": [1, 2], "image_id": 1, "split": "val", "no_target": False,
         "sentences": [{"sent": "the two small boxes", "raw": "the two small boxes", "sent_id": 1}]},
        {"ref_id": 2, "ann_id": [-1], "image_id": 1, "split": "val", "no_target": True,
         "sentences": [{"sent": "the yellow box", "raw": "the yellow box", "sent_id": 2}]},
    ])


def write_llava(root: str) -> None:
    write_image(os.path.join(root, "coco", "train2017", "000000000003.jpg"))
    write_json(os.path.join(root, "llava_dataset", "llava_instruct_150k.json"), [{
        "id": "3", "image": "000000000003.jpg",
        "conversations": [
            {"from": "human", "value": "How many boxes are there?\n<image>"},
            {"from": "gpt", "value": "There are three boxes {red, green, blue}."},
            {"from": "human", "value": "Which one is the longest?"},
            {"from": "gpt", "value": "The blue box."},
        ],
    }])


def write_reason_seg(root: str, split: str = "train") -> None:
    folder = os.path.join(root, "reason_seg", "ReasonSeg", split)
    write_image(os.path.join(folder, "r1.jpg"))
    x0, y0, x1, y1 = BOXES["green"][1]
    write_json(os.path.join(folder, "r1.json"), {
        "text": ["the box that looks like grass"], "is_sentence": False,
        "shapes": [
            {"label": "target", "points": [[x0, y0], [x1 - 1, y0], [x1 - 1, y1 - 1], [x0, y1 - 1]], "shape_type": "polygon"},
            {"label": "ignore", "points": [[x0, y0], [x0 + 5, y0], [x0 + 5, y0 + 5], [x0, y0 + 5]], "shape_type": "polygon"},
        ],
    })


def muse_ann(box: str, name: str) -> dict:
    return {"category_id": 1, "category_name": "box", "rephrased_name": name, "bbox": [0, 0, 1, 1], "segmentation": [box_polygon(box)]}


def write_muse(root: str, split: str = "train", text_answers: bool = True) -> None:
    file_name = "COCO_train2014_000000000001.jpg"
    write_image(os.path.join(root, "refer_seg", "images", "mscoco", "images", "train2014", file_name))
    item = {
        "file_name": file_name, "height": HEIGHT, "width": WIDTH,
        "ann_list": [muse_ann(b, f"the {b} box") for b in ("red", "green", "blue")],
        "questions": ["Which boxes are not blue?", "Which box is longest?"],
        "answers": [[muse_ann("green", "the green box"), muse_ann("red", "the red box")], [muse_ann("blue", "the blue box")]],
    }
    if text_answers:
        item["text_answers"] = ["The green one {seg} and the red one {seg} are not blue.", "The long blue box {seg}."]
    write_json(os.path.join(root, "muse", f"muse_{split}.json"), [item])


def synthetic_world(root: Path, train: int, val: int, seed: int = 0) -> dict[str, Path]:
    """``python -m dataset.synthetic`` (demo preset) into ``root/data`` and a tiny model whose tokenizer
    was trained on its corpus into ``root/tiny``: {"root", "data", "tiny"}."""
    from model.tiny import build_tiny

    data = root / "data"
    subprocess.run(
        [sys.executable, "-m", "dataset.synthetic", "--out", str(data), "--train", str(train), "--val", str(val), "--preset", "demo"],
        cwd=REPO, check=True, capture_output=True,
    )
    tiny = build_tiny(root / "tiny", seed=seed, corpus=(data / "corpus.txt").read_text().splitlines())
    return {"root": root, "data": data, "tiny": tiny}
