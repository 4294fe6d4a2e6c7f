"""Validation sets, named by the original's ``--val_dataset`` strings.

- ``ReasonSeg|val`` (or ``|test``), ``<refer ds>|<splitBy>|<split>`` (e.g. ``refcoco|unc|val``,
  ``grefcoco|unc|val``): teacher-forced. One sample per image; each sentence is a conversation with
  the first question template and the answer ``"S."`` (one seg group), its mask in the same order.
- ``MultiReasonSeg|val``, ``MultiReasonSeg|test_less``, ``MultiReasonSeg|test_many``: free generation.
  Each question is a prompt with an empty assistant turn; ``targets`` (collated as
  ``sampled_classes_list``) holds the ground-truth target names per question, so ``len`` is the
  per-question target count, and the masks are those targets in order.

Items are checked when the set is built (missing image files, inconsistent annotations are dropped and
counted in ``skip_counter``); an image that still cannot be decoded later raises, so that no metric is
silently computed on fewer items than reported.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np
from PIL import Image
from torch.utils.data import Dataset
from transformers import PreTrainedTokenizerBase

from model.conversation import Turn
from model.processing_pixellm import PixelLMImageProcessor
from model.tokens import PixelLMTokenIds, seg_group_text

from .collate import Collator
from .errors import SkipItem
from .image_io import check_image_size, check_polygons, read_rgb
from .multi_reason_seg import load_muse, muse_image_path, muse_question, question_masks, question_problem, target_name
from .questions import image_question
from .reason_seg import list_reason_images, read_reason_json, reason_mask, reason_question
from .refer_annotations import REFER_DATASETS, Expression, ReferData, load_refer
from .refer_seg import expression_mask
from .sample import Sample, empty_masks
from .skips import SkipCounter
from .templates import Templates, fill, load_templates


@dataclass
class ValItem:
    image_path: str
    questions: list[str]
    payload: list = field(default_factory=list)


class ValDataset(Dataset):
    """A validation set: ``ds[i]`` is a ``Sample`` (``inference=True``); batch with ``ds.collate_fn``."""

    def __init__(
        self,
        name: str,
        kind: str,
        items: list[ValItem],
        processor: PixelLMImageProcessor,
        collate_fn: Collator,
        skip_counter: SkipCounter,
        refer: ReferData | None = None,
    ) -> None:
        self.name, self.kind, self.items, self.processor = name, kind, items, processor
        self.collate_fn, self.skip_counter, self.refer = collate_fn, skip_counter, refer
        self.seg = seg_group_text(collate_fn.token_ids.tokens_per_target)
        self.templates: Templates = load_templates(False)

    def __len__(self) -> int:
        return len(self.items)

    def _read(self, path: str) -> np.ndarray:
        try:
            return read_rgb(path)
        except SkipItem as skip:
            raise RuntimeError(f"{self.name}: cannot decode {path}; fix or remove the file") from skip

    def __getitem__(self, index: int) -> Sample:
        item = self.items[index]
        image = self._read(item.image_path)
        height, width = image.shape[:2]
        answer = fill(self.templates.validation_answer, seg=self.seg)
        conversations, targets, masks = [], [], []
        if self.kind == "reason":
            mask = reason_mask(item.payload[0], height, width, item.image_path)
            for text in item.questions:
                question = reason_question(text, bool(item.payload[0].get("is_sentence")), self.templates, 0)
                conversations.append([Turn(image_question(question), answer)])
                targets.append([text])
                masks.append(mask)
        elif self.kind == "refer":
            for expr in item.payload:
                question = fill(self.templates.short[0], class_name=expr.sentence.lower())
                conversations.append([Turn(image_question(question), answer)])
                targets.append([expr.sentence])
                masks.append(expression_mask(self.refer, expr, image, allow_empty=True))
        else:
            muse_item, valid = item.payload
            check_image_size(image, int(muse_item["height"]), int(muse_item["width"]), item.image_path)
            for q in valid:
                question = muse_question(muse_item["questions"][q], self.templates)
                conversations.append([Turn(image_question(question), None)])
                anns = muse_item["answers"][q]
                targets.append([target_name(a, None) for a in anns])
                masks.extend(question_masks(anns, height, width))
        stacked = np.stack(masks) if masks else empty_masks(height, width)
        return Sample(item.image_path, image, self.processor.preprocess(image), conversations, targets, stacked, self.name, inference=True)


def _reason_items(dataset_dir: str, split: str, counter: SkipCounter, source: str) -> list[ValItem]:
    items = []
    for path in list_reason_images(dataset_dir, split):
        try:
            data = read_reason_json(os.path.splitext(path)[0] + ".json")
            with Image.open(path) as img:
                width, height = img.size
            reason_mask(data, height, width, path)
        except OSError:
            counter.record(source, "unreadable_image")
            continue
        except SkipItem as skip:
            counter.record(source, skip.reason)
            continue
        texts = [str(t).strip() for t in data["text"] if str(t).strip()]
        items.append(ValItem(path, texts, [data]))
    return items


def _refer_items(data: ReferData, split: str, counter: SkipCounter, source: str) -> list[ValItem]:
    items = []
    for image_id, exprs in sorted(data.expressions_by_image(split).items()):
        path = data.image_path(image_id)
        if not os.path.isfile(path):
            counter.record(source, "unreadable_image")
            continue
        info = data.index.images[image_id]
        usable: list[Expression] = []
        for expr in exprs:
            anns = [data.index.annotations.get(a) for a in expr.ann_ids]
            if any(a is None for a in anns):
                counter.record(source, "bad_annotation")
                continue
            try:
                for ann in anns:
                    if isinstance(ann["segmentation"], list):
                        check_polygons(ann["segmentation"], info["height"], info["width"])
            except SkipItem as skip:
                counter.record(source, skip.reason)
                continue
            usable.append(expr)
        if usable:
            items.append(ValItem(path, [e.sentence for e in usable], usable))
    return items


def _muse_items(dataset_dir: str, split: str, counter: SkipCounter, source: str) -> list[ValItem]:
    items = []
    for item in load_muse(dataset_dir, split):
        try:
            path = muse_image_path(dataset_dir, item)
        except SkipItem as skip:
            counter.record(source, skip.reason)
            continue
        if not os.path.isfile(path):
            counter.record(source, "unreadable_image")
            continue
        valid = []
        for q in range(len(item.get("questions") or [])):
            problem = question_problem(item, q)
            if problem is None:
                valid.append(q)
            else:
                counter.record(source, problem)
        if valid:
            items.append(ValItem(path, [str(item["questions"][q]) for q in valid], [item, valid]))
    return items


def build_val_dataset(
    name: str,
    dataset_dir: str,
    tokenizer: PreTrainedTokenizerBase,
    processor: PixelLMImageProcessor,
    token_ids: PixelLMTokenIds,
    num_image_tokens: int,
    model_max_length: int | None = None,
) -> ValDataset:
    """The validation set called ``name`` (see the module docstring) with its collator as ``collate_fn``."""
    parts = name.split("|")
    counter = SkipCounter([name])
    collate_fn = Collator(tokenizer, token_ids, num_image_tokens, model_max_length or tokenizer.model_max_length)
    refer = None
    if parts[0] == "ReasonSeg" and len(parts) == 2:
        kind, items = "reason", _reason_items(dataset_dir, parts[1], counter, name)
    elif parts[0] == "MultiReasonSeg" and len(parts) == 2:
        kind, items = "muse", _muse_items(dataset_dir, parts[1], counter, name)
    elif parts[0] in REFER_DATASETS and len(parts) == 3:
        refer = load_refer(dataset_dir, parts[0], parts[1])
        kind, items = "refer", _refer_items(refer, parts[2], counter, name)
    else:
        raise ValueError(
            f"unknown --val_dataset '{name}': use 'ReasonSeg|val', '<refclef|refcoco|refcoco+|refcocog|grefcoco>|<splitBy>|<split>' "
            f"or 'MultiReasonSeg|val|test_less|test_many' (one split)"
        )
    if not items:
        raise ValueError(f"validation set '{name}' under {dataset_dir} has no usable items ({counter.counts()})")
    return ValDataset(name, kind, items, processor, collate_fn, counter, refer)
