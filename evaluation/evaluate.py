"""The evaluation loop: gIoU and cIoU of a model on a validation set (used by training and --eval_only).

Two kinds of batches, told apart by their labels:

- teacher-forced (ReasonSeg, refCOCO-style sets): the answers hold the ground-truth seg groups; one
  forward pass gives a mask per group, scored as (logit > 0) against its GT mask;
- free generation (MUSE sets, whose prompts end with an empty assistant turn): the prompts are
  re-padded on the left, answered greedily with ``generate_with_masks``, and each question's predicted
  masks are matched to its GT masks (``evaluation.matching.question_mask_pairs``: unmatched masks on
  either side count as IoU-0 pairs).

Besides the pairs, every question's target counts are added (``evaluation.metrics.QuestionTargets``:
no_target_acc, count_acc, invented_share).

Items are processed in dataset order (each rank takes every world_size-th item when sharding), the model
runs in eval mode without gradients, and the sums are all-reduced, so the result does not depend on the
batch size or the number of ranks.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset
from tqdm import tqdm

from model.conversation import IGNORE_INDEX, left_padded
from model.modeling_pixellm import base_model_of, model_inputs

from .matching import MatchingConfig, question_mask_pairs
from .metrics import (
    IoUAccumulator,
    PairCounts,
    QuestionTargets,
    all_reduce_,
    pair_counts,
    question_targets,
    teacher_forced_targets,
)


@dataclass
class EvalOptions:
    """How ``evaluate`` runs.

    batch_size: images per batch (for a Dataset input); limit: evaluate only the first N items (0/None: all);
    max_new_tokens: generation budget per question; jsonl_path: write one JSON line per item (rank 0,
    items of all ranks, in dataset order); shard: split the items over the ranks (turn off under ZeRO-3,
    whose every forward is a collective that all ranks must run together); tokenizer: decodes generated
    answers for the JSONL; workers: DataLoader workers; desc: progress bar label.
    """

    batch_size: int = 1
    limit: int | None = None
    max_new_tokens: int = 512
    jsonl_path: str | None = None
    shard: bool = True
    tokenizer: object | None = None
    workers: int = 0
    desc: str = "eval"
    matching: MatchingConfig = field(default_factory=MatchingConfig)


def _world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _pairs_record(counts: PairCounts) -> dict:
    return {
        "iou": [round(float(v), 6) for v in counts.iou],
        "intersection": counts.intersection.tolist(),
        "union": counts.union.tolist(),
    }


ImageResult = tuple[PairCounts, list[QuestionTargets], dict]


def _teacher_forced(model: nn.Module, inputs: dict, batch: dict) -> list[ImageResult]:
    """One forward pass; per image, (counts of its pairs, target counts of its questions, JSONL fields)."""
    out = model(
        input_ids=inputs["input_ids"],
        attention_mask=inputs["attention_mask"],
        pixel_values=inputs["pixel_values"],
        clip_resize=inputs["clip_resize"],
        offset=inputs["offset"],
        original_sizes=inputs["original_sizes"],
    )
    results = []
    for b, (pred, gt) in enumerate(zip(out.pred_masks, inputs["masks_list"])):
        if pred.shape[0] != gt.shape[0]:
            raise RuntimeError(f"{batch['image_paths'][b]}: {pred.shape[0]} predicted masks for {gt.shape[0]} GT masks")
        counts = pair_counts(pred > 0, gt)
        results.append((counts, teacher_forced_targets(counts), {}))
    return results


def _generated(model: nn.Module, inputs: dict, batch: dict, options: EvalOptions, pad_id: int) -> list[ImageResult]:
    """Greedy answers to every prompt; per image, (counts of its matched pairs, target counts of its questions, JSONL fields)."""
    prompts = [row[keep.bool()].tolist() for row, keep in zip(inputs["input_ids"], inputs["attention_mask"])]
    ids, mask = (t.to(inputs["input_ids"].device) for t in left_padded(prompts, pad_id))
    gen = model.generate_with_masks(
        ids,
        attention_mask=mask,
        pixel_values=inputs["pixel_values"],
        clip_resize=inputs["clip_resize"],
        original_sizes=inputs["original_sizes"],
        offset=inputs["offset"],
        max_new_tokens=options.max_new_tokens,
    )
    offset = inputs["offset"].tolist()
    results = []
    for b, gt_all in enumerate(inputs["masks_list"]):
        per_question = [len(t) for t in batch["sampled_classes_list"][b]]
        gt_split = torch.split(gt_all, per_question)
        preds, gts, unmatched, answers, pairs_per_question = [], [], [], [], []
        for j, gt in enumerate(gt_split):
            row = offset[b] + j
            pairs = question_mask_pairs(gen.pred_masks[row], gt, options.matching)
            for pair in pairs:
                preds.append(pair.pred)
                gts.append(pair.gt)
                unmatched.append(pair.unmatched)
            pairs_per_question.append(len(pairs))
            if options.tokenizer is not None:
                answers.append(options.tokenizer.decode(gen.sequences[row], skip_special_tokens=False))
            else:
                answers.append(gen.sequences[row])
        height, width = gt_all.shape[-2:]
        counts = pair_counts(
            torch.stack(preds) if preds else torch.zeros((0, height, width), dtype=torch.bool),
            torch.stack(gts) if gts else gt_all.new_zeros((0, height, width)),
            torch.tensor(unmatched, dtype=torch.bool),
        )
        rows = range(offset[b], offset[b] + len(per_question))
        fields = {"answers": answers, "pred_counts": [int(gen.pred_masks[r].shape[0]) for r in rows],
                  "chosen_candidates": [gen.chosen_candidate[r] for r in rows], "added_targets": [gen.added_targets[r] for r in rows]}
        targets = [question_targets(c, g) for c, g in zip(counts.split(pairs_per_question), per_question)]
        results.append((counts, targets, fields))
    return results


def _batches(data: Dataset | DataLoader, options: EvalOptions, rank: int, world: int) -> tuple[Iterable[dict], int, list[int] | None]:
    """(batches, number of items this rank sees, their dataset indices when known)."""
    if isinstance(data, DataLoader):
        return data, len(data.dataset), None
    collate = getattr(data, "collate_fn", None)
    if collate is None:
        raise TypeError("evaluate needs a DataLoader or a dataset with a collate_fn (dataset.validation.build_val_dataset)")
    indices = list(range(len(data)))[: options.limit or None]
    if options.shard:
        indices = indices[rank::world]
    loader = DataLoader(Subset(data, indices), batch_size=options.batch_size, shuffle=False, collate_fn=collate, num_workers=options.workers)
    return loader, len(indices), indices


@torch.no_grad()
def evaluate(model: nn.Module, data: Dataset | DataLoader, device: torch.device | str, options: EvalOptions | None = None) -> dict:
    """gIoU, cIoU (and where defined pairs, n_acc, t_acc, questions, no_target_acc, count_acc, invented_share) of ``model`` on ``data``, summed over all ranks.

    model: PixelLMForCausalLM, possibly inside peft and/or a DeepSpeed engine. data: a validation set with
    ``collate_fn`` (batched and sharded here) or a DataLoader of collated batches (used as given; ``limit``
    then counts images). Returns the metrics plus ``items`` (images evaluated).
    """
    options = options or EvalOptions()
    device = torch.device(device)
    net = base_model_of(model)
    dtype = next(net.parameters()).dtype
    pad_id = net.config.text_config.pad_token_id
    pad_id = 0 if pad_id is None else pad_id
    rank, world = _world()
    batches, total, indices = _batches(data, options, rank, world)
    was_training = net.training
    net.eval()
    acc = IoUAccumulator()
    records: list[dict] = []
    seen = 0
    progress = tqdm(total=total, desc=options.desc, unit="img", disable=rank != 0, dynamic_ncols=True)
    try:
        for batch in batches:
            if isinstance(data, DataLoader) and options.limit and seen >= options.limit:
                break
            inputs = model_inputs(batch, device, dtype)
            supervised = (inputs["labels"] != IGNORE_INDEX).any(dim=1)
            if bool(supervised.all()):
                results = _teacher_forced(net, inputs, batch)
            elif not bool(supervised.any()):
                results = _generated(net, inputs, batch, options, pad_id)
            else:
                raise ValueError("a batch mixes answered conversations and generation prompts: evaluate one validation set at a time")
            for b, (counts, targets, extra) in enumerate(results):
                acc.add_counts(counts)
                for question in targets:
                    acc.add_question(question)
                if options.jsonl_path:
                    index = indices[seen + b] if indices is not None else seen + b
                    records.append(
                        {
                            "index": index,
                            "image_path": batch["image_paths"][b],
                            "questions": batch["questions_list"][b],
                            "targets": batch["sampled_classes_list"][b],
                            **extra,
                            **_pairs_record(counts),
                        }
                    )
            seen += len(results)
            progress.update(len(results))
            if acc.num_pairs:
                progress.set_postfix(giou=f"{acc.giou:.3f}", ciou=f"{acc.ciou:.3f}")
    finally:
        progress.close()
        net.train(was_training)
    if options.shard:
        all_reduce_(acc)
        seen = int(_sum_over_ranks(seen))
    if options.jsonl_path:
        _write_jsonl(options.jsonl_path, records, shard=options.shard, rank=rank)
    return {**acc.summary(), "items": float(seen)}


def _sum_over_ranks(value: int) -> int:
    if not (dist.is_available() and dist.is_initialized()):
        return value
    gathered: list = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, value)
    return sum(gathered)


def _write_jsonl(path: str, records: list[dict], shard: bool, rank: int) -> None:
    if shard and dist.is_available() and dist.is_initialized():
        gathered: list = [None] * dist.get_world_size()
        dist.all_gather_object(gathered, records)
        records = [r for part in gathered for r in part]
    if rank != 0:
        return
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        for record in sorted(records, key=lambda r: r["index"]):
            f.write(json.dumps(record) + "\n")
