"""Collate samples into the batch of docs/architecture.md (the model's input).

Each conversation is tokenised with the llava_v1 template (``model.conversation``): labels are -100
everywhere but the assistant answers, and the ``<image>`` placeholder becomes ``<im_start>``, the image
ids, ``<im_end>``. A conversation longer than ``model_max_length`` is cut; a cut inside a seg group
moves to the group's start, and the masks of every group that does not survive are dropped, so the
i-th remaining seg group always pairs with the i-th mask.
"""

from __future__ import annotations

import logging

import torch
from transformers import PreTrainedTokenizerBase

from model.conversation import IGNORE_INDEX, conversation_text, tokenize_conversation
from model.tokens import PixelLMTokenIds

from .sample import Sample

logger = logging.getLogger(__name__)


class Collator:
    """``Collator(tokenizer, token_ids, num_image_tokens, model_max_length)(samples) -> batch dict``."""

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        token_ids: PixelLMTokenIds,
        num_image_tokens: int,
        model_max_length: int,
    ) -> None:
        if tokenizer.pad_token_id is None:
            raise ValueError("The tokenizer has no pad token: set tokenizer.pad_token (e.g. to its unk token) before collating")
        self.tokenizer = tokenizer
        self.token_ids = token_ids
        self.num_image_tokens = num_image_tokens
        self.model_max_length = model_max_length

    def _truncate(self, ids: list[int], labels: list[int], starts: list[int]) -> tuple[list[int], list[int], int]:
        """Cut to model_max_length without splitting a seg group; returns ids, labels, groups kept."""
        if len(ids) <= self.model_max_length:
            return ids, labels, len(starts)
        k = self.token_ids.tokens_per_target
        cut = self.model_max_length
        for p in starts:
            if p < cut < p + k:
                cut = p
        if self.token_ids.im_end in ids and cut <= ids.index(self.token_ids.im_end):
            raise ValueError(
                f"model_max_length={self.model_max_length} does not even hold the system prompt and the "
                f"{self.num_image_tokens} image tokens ({ids.index(self.token_ids.im_end) + 1} tokens): raise --model_max_length"
            )
        kept = sum(1 for p in starts if p + k <= cut)
        if kept < len(starts):
            logger.warning("truncation to %d tokens dropped %d of %d targets", self.model_max_length, len(starts) - kept, len(starts))
        return ids[:cut], labels[:cut], kept

    def _group_starts(self, ids: list[int]) -> list[int]:
        seg = list(self.token_ids.seg)
        k = len(seg)
        starts = [p for p, t in enumerate(ids) if t == seg[0]]
        for p in starts:
            if ids[p : p + k] != seg:
                raise ValueError(f"a seg group at token {p} is not the full sequence {seg}: {ids[p : p + k]}")
        if sum(1 for t in ids if t in self.token_ids.seg) != k * len(starts):
            raise ValueError("seg tokens outside complete seg groups")
        return starts

    def __call__(self, samples: list[Sample]) -> dict:
        if not samples:
            raise ValueError("cannot collate an empty list of samples")
        rows_ids: list[list[int]] = []
        rows_labels: list[list[int]] = []
        offset = [0]
        masks_list, targets_list, conversation_list = [], [], []
        for sample in samples:
            cursor = 0
            keep_masks: list[int] = []
            kept_targets: list[list[str]] = []
            for turns, targets in zip(sample.conversations, sample.targets):
                tok = tokenize_conversation(self.tokenizer, turns, self.token_ids, self.num_image_tokens)
                starts = self._group_starts(tok.input_ids)
                prompt_only = turns[-1].answer is None
                if not prompt_only and len(starts) != len(targets):
                    raise ValueError(
                        f"{sample.source} ({sample.image_path}): {len(starts)} seg groups in the answers but "
                        f"{len(targets)} targets"
                    )
                ids, labels, kept = self._truncate(tok.input_ids, tok.labels, starts)
                if prompt_only:
                    kept = len(targets)
                keep_masks.extend(range(cursor, cursor + kept))
                kept_targets.append(list(targets[:kept]))
                cursor += len(targets)
                rows_ids.append(ids)
                rows_labels.append(labels)
                conversation_list.append(conversation_text(turns))
            offset.append(len(rows_ids))
            masks = torch.from_numpy(sample.masks[keep_masks]).float()
            masks_list.append(masks)
            targets_list.append(kept_targets)
        length = max(len(r) for r in rows_ids)
        pad = self.tokenizer.pad_token_id
        input_ids = torch.full((len(rows_ids), length), pad, dtype=torch.long)
        labels = torch.full((len(rows_ids), length), IGNORE_INDEX, dtype=torch.long)
        attention_mask = torch.zeros((len(rows_ids), length), dtype=torch.long)
        for i, (ids, lab) in enumerate(zip(rows_ids, rows_labels)):
            input_ids[i, : len(ids)] = torch.tensor(ids, dtype=torch.long)
            labels[i, : len(lab)] = torch.tensor(lab, dtype=torch.long)
            attention_mask[i, : len(ids)] = 1
        return {
            "pixel_values": torch.stack([s.processed.pixel_values for s in samples]),
            "clip_resize": torch.tensor([s.processed.clip_resize for s in samples], dtype=torch.long),
            "offset": torch.tensor(offset, dtype=torch.long),
            "input_ids": input_ids,
            "labels": labels,
            "attention_mask": attention_mask,
            "masks_list": masks_list,
            "original_sizes": torch.tensor([s.processed.original_size for s in samples], dtype=torch.long),
            "conversation_list": conversation_list,
            "questions_list": [s.questions for s in samples],
            "sampled_classes_list": targets_list,
            "image_paths": [s.image_path for s in samples],
            "inference": all(s.inference for s in samples),
        }
