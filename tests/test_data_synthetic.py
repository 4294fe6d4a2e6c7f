"""The synthetic world: written by the CLI in the real formats, read by the real loaders, batched by a DataLoader."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import subprocess
import sys

import cv2
import numpy as np
import pytest
from torch.utils.data import DataLoader

from child_process import child_env
from dataset.collate import Collator
from dataset.mix import DataArgs, HybridDataset
from dataset.sampler import GlobalIndexSampler
from dataset.synthetic import preset, write_world
from dataset.synthetic.config import FULL_COLOURS
from dataset.synthetic.language import presence_rounds
from dataset.synthetic.scene import generate_scene
from dataset.validation import build_val_dataset
from model.processing_pixellm import PixelLMImageProcessor
from model.tiny_tokenizer import train_tiny_tokenizer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROC = PixelLMImageProcessor(image_size=64)
ALL = "sem_seg||refer_seg||vqa||reason_seg||multi_reason_seg"


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    out = tmp_path_factory.mktemp("world")
    env = child_env()
    subprocess.run([sys.executable, "-m", "dataset.synthetic", "--out", str(out), "--seed", "3", "--train", "40", "--val", "8"],
                   cwd=ROOT, env=env, check=True, capture_output=True)
    lines = (out / "corpus.txt").read_text().splitlines()
    tokenizer, ids = train_tiny_tokenizer(lines, 6)
    return out, tokenizer, ids


def test_tree_has_the_real_layout(world):
    out, _, _ = world
    for rel in ["muse/muse_train.json", "muse/muse_val.json", "muse/muse_test_less.json", "muse/muse_test_many.json",
                "refer_seg/refcoco/refs(unc).p", "refer_seg/refcoco/instances.json", "reason_seg/ReasonSeg/train",
                "reason_seg/ReasonSeg/val", "llava_dataset/llava_instruct_150k.json", "ade20k/images/training",
                "ade20k/annotations/training", "refer_seg/images/mscoco/images/train2014", "coco/train2017", "corpus.txt"]:
        assert (out / rel).exists(), rel
    many = json.loads((out / "muse" / "muse_test_many.json").read_text())
    less = json.loads((out / "muse" / "muse_test_less.json").read_text())
    assert all(len(a) >= 3 for it in many for a in it["answers"])
    assert all(len(a) <= 2 for it in less for a in it["answers"])
    train = json.loads((out / "muse" / "muse_train.json").read_text())
    assert any(len(a) == 0 for it in train for a in it["answers"])  # some questions name no target
    sizes = {(it["height"], it["width"]) for it in train}
    assert len(sizes) > 10 and any(h != w for h, w in sizes)


def digest(folder) -> str:
    h = hashlib.sha256()
    for dirpath, _, files in sorted(os.walk(folder)):
        for f in sorted(files):
            h.update(f.encode())
            with open(os.path.join(dirpath, f), "rb") as fh:
                h.update(fh.read())
    return h.hexdigest()


def test_deterministic_per_seed(tmp_path):
    write_world(str(tmp_path / "a"), preset("demo"), seed=1, n_train=6, n_val=2)
    write_world(str(tmp_path / "b"), preset("demo"), seed=1, n_train=6, n_val=2)
    write_world(str(tmp_path / "c"), preset("demo"), seed=2, n_train=6, n_val=2)
    assert digest(tmp_path / "a") == digest(tmp_path / "b") != digest(tmp_path / "c")


def test_presence_questions_answer_with_the_shapes_that_are_there():
    cfg, rng = preset("demo"), np.random.default_rng(0)
    answers = set()
    for _ in range(40):
        scene = generate_scene(rng, cfg)
        (kind_q, kind_a), (colour_q, colour_a) = presence_rounds(rng, scene, list(cfg.colours), list(cfg.kinds))
        kind = next(k for k in cfg.kinds if k in kind_q)
        colour = next(c for c in cfg.colours if c in colour_q)
        named = sorted(f"the {s.colour} {s.kind}" for s in scene.shapes if s.kind == kind)
        assert (sorted(kind_a.removeprefix("Yes: ").rstrip(".").replace(" and ", ", ").split(", ")) == named if named
                else kind_a == f"No, there is no {kind}.")
        named = sorted(f"the {s.colour} {s.kind}" for s in scene.shapes if s.colour == colour)
        assert (sorted(colour_a.removeprefix("Yes: ").rstrip(".").replace(" and ", ", ").split(", ")) == named if named
                else colour_a == f"No, nothing is {colour}.")
        answers.update(a.split()[0] for a in (kind_a, colour_a))
    assert answers == {"Yes:", "No,"}


def test_presence_questions_change_only_the_training_vqa(tmp_path):
    plain, presence = tmp_path / "plain", tmp_path / "presence"
    write_world(str(plain), preset("demo"), seed=1, n_train=12, n_val=4)
    write_world(str(presence), dataclasses.replace(preset("demo"), vqa_presence_questions=True), seed=1, n_train=12, n_val=4)
    for split in ("val", "test_less", "test_many"):
        name = os.path.join("muse", f"muse_{split}.json")
        assert (plain / name).read_bytes() == (presence / name).read_bytes()
    vqa = os.path.join("llava_dataset", "llava_instruct_150k.json")
    questions = [turn["value"] for item in json.loads((presence / vqa).read_text()) for turn in item["conversations"] if turn["from"] == "human"]
    assert any(q.removeprefix("<image>\n").startswith(("Is there a", "Are there any", "Is anything", "Are there ")) for q in questions)
    assert (plain / vqa).read_bytes() != (presence / vqa).read_bytes()


def test_demo_preset_is_simpler():
    demo, full = preset("demo"), preset("full")
    assert len(demo.colours) < len(full.colours) and len(demo.kinds) < len(full.kinds)
    assert demo.max_shapes <= 4 and demo.sizes["small"][0] > full.sizes["small"][0] and demo.min_visible > full.min_visible


def colour_of(name: str) -> str | None:
    return next((c for c in FULL_COLOURS if f" {c} " in f" {name} "), None)


def test_mixed_loader_over_the_world(world):
    out, tokenizer, ids = world
    args = DataArgs(dataset_dir=str(out), dataset=ALL, sample_rates="1,1,1,1,1", sem_seg_data="ade20k",
                    refer_seg_data="refcoco", num_classes_per_question=3, seed=4)
    ds = HybridDataset(args, PROC, ids.tokens_per_target, samples_per_epoch=24)
    loader = DataLoader(ds, batch_size=4, sampler=GlobalIndexSampler(24), num_workers=2,
                        collate_fn=Collator(tokenizer, ids, 16, 512))
    checked = 0
    for batch in loader:
        assert batch["pixel_values"].shape == (4, 3, 64, 64)
        seg_groups = int(sum((batch["input_ids"] == ids.seg[0]).sum(1)))
        assert seg_groups == sum(m.shape[0] for m in batch["masks_list"])
        for path, targets, masks in zip(batch["image_paths"], batch["sampled_classes_list"], batch["masks_list"]):
            image = cv2.imread(path)[..., ::-1]
            names = [n for group in targets for n in group]
            for name, mask in zip(names, masks.numpy()):
                colour = colour_of(name)
                if colour is None:
                    continue
                pixels = image[mask == 1].astype(int)
                assert np.abs(pixels.mean(0) - np.array(FULL_COLOURS[colour])).max() < 25, name
                checked += 1
    assert checked > 20
    assert ds.skip_counter.counts() == {}


def test_every_type_and_val_set_reads_the_world(world):
    out, tokenizer, ids = world
    for kind in ALL.split("||"):
        args = DataArgs(dataset_dir=str(out), dataset=kind, sample_rates="1", sem_seg_data="ade20k", refer_seg_data="refcoco")
        ds = HybridDataset(args, PROC, ids.tokens_per_target)
        batch = Collator(tokenizer, ids, 16, 512)([ds[i] for i in range(3)])
        assert batch["input_ids"].shape[0] == batch["offset"][-1]
    for name in ["ReasonSeg|val", "refcoco|unc|val", "MultiReasonSeg|val", "MultiReasonSeg|test_less", "MultiReasonSeg|test_many"]:
        val = build_val_dataset(name, str(out), tokenizer, PROC, ids, 16, 512)
        assert len(val) > 0
        batch = val.collate_fn([val[0]])
        assert batch["inference"] is True and batch["masks_list"][0].shape[0] == sum(len(t) for t in batch["sampled_classes_list"][0])
