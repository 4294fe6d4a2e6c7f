"""vqa: LLaVA-Instruct-150k, ``llava_dataset/llava_instruct_150k.json`` with images in ``coco/train2017``.

Each item ``{image, conversations: [{from: human|gpt, value}, ...]}`` becomes one multi-turn
conversation (every gpt turn supervised); the ``<image>`` placeholder moves to the front of the first
question. No masks.
"""

from __future__ import annotations

import json
import os

import numpy as np

from model.conversation import Turn
from model.tokens import IMAGE_TOKEN

from .errors import SkipItem, require_path
from .image_io import read_rgb
from .questions import image_question
from .sample import Sample, empty_masks
from .skips import SkipCounter
from .source import DataContext, TypeDataset

VQA_FILES = {"llava_instruct_150k": "llava_instruct_150k.json"}


def llava_turns(conversations: list[dict]) -> list[Turn]:
    """[{from, value}, ...] -> Turns; raises SkipItem('bad_conversation') unless it alternates human/gpt."""
    if not conversations or len(conversations) % 2:
        raise SkipItem("bad_conversation", f"{len(conversations)} messages (need human/gpt pairs)")
    turns = []
    for i in range(0, len(conversations), 2):
        human, gpt = conversations[i], conversations[i + 1]
        if human.get("from") != "human" or gpt.get("from") != "gpt":
            raise SkipItem("bad_conversation", f"roles {human.get('from')}/{gpt.get('from')} at message {i}")
        question = str(human.get("value", "")).replace(IMAGE_TOKEN, "").strip()
        answer = str(gpt.get("value", "")).strip()
        if not answer:
            raise SkipItem("bad_conversation", "empty answer")
        turns.append(Turn(image_question(question) if i == 0 else question, answer))
    return turns


class LlavaSource:
    def __init__(self, name: str, items: list[dict], image_root: str, ctx: DataContext) -> None:
        self.name, self.items, self.image_root, self.ctx = name, items, image_root, ctx

    def __len__(self) -> int:
        return len(self.items)

    def build(self, index: int, rng: np.random.Generator) -> Sample:
        item = self.items[index]
        if "image" not in item or "conversations" not in item:
            raise SkipItem("bad_conversation", "item without 'image' or 'conversations'")
        turns = llava_turns(item["conversations"])
        path = os.path.join(self.image_root, item["image"])
        image = read_rgb(path)
        height, width = image.shape[:2]
        return Sample(path, image, self.ctx.processor.preprocess(image), [turns], [[]], empty_masks(height, width), self.name)


def vqa_dataset(dataset_dir: str, names: list[str], ctx: DataContext, counter: SkipCounter) -> TypeDataset:
    sources = []
    for name in names:
        if name not in VQA_FILES:
            raise ValueError(f"--vqa_data: unknown dataset '{name}'; choose from {list(VQA_FILES)}")
        path = require_path(
            os.path.join(dataset_dir, "llava_dataset", VQA_FILES[name]), name, "the LLaVA json [{image, conversations}]"
        )
        with open(path) as f:
            items = json.load(f)
        image_root = require_path(os.path.join(dataset_dir, "coco", "train2017"), name, "the COCO train2017 images")
        sources.append(LlavaSource(name, items, image_root, ctx))
    return TypeDataset("vqa", sources, counter)
