"""The training and validation data of a run, built from ``TrainArgs``.

Training batches come from ``dataset.mix.HybridDataset``, whose item i is a pure function of (seed, i).
The run reads the sample sequence 0, 1, 2, ... in order: the j-th sample a rank consumes is item
``j * world_size + rank``. A run resumed at optimizer step s skips the ``s * batch_size *
grad_accumulation_steps`` samples per rank already used, so it sees exactly what the uninterrupted run
would have seen.
"""

from __future__ import annotations

import logging

import torch
from torch.utils.data import DataLoader
from transformers import PreTrainedTokenizerBase

from dataset.collate import Collator
from dataset.mix import HybridDataset
from dataset.sampler import GlobalIndexSampler
from dataset.validation import ValDataset, build_val_dataset
from model.processing_pixellm import PixelLMImageProcessor
from model.tokens import PixelLMTokenIds

from .args import TrainArgs

logger = logging.getLogger(__name__)


def samples_per_step(args: TrainArgs) -> int:
    """Samples one rank consumes per optimizer step."""
    return args.batch_size * args.grad_accumulation_steps


def build_train_dataset(args: TrainArgs, processor: PixelLMImageProcessor, tokens_per_target: int, world_size: int) -> HybridDataset:
    samples_per_epoch = args.steps_per_epoch * samples_per_step(args) * world_size
    dataset = HybridDataset(args, processor, tokens_per_target, samples_per_epoch)
    logger.info(
        "training mixture from %s: %s with probabilities %s", args.dataset_dir, dataset.kinds, [round(float(p), 3) for p in dataset.probabilities]
    )
    return dataset


def build_train_loader(
    args: TrainArgs,
    dataset: HybridDataset,
    collator: Collator,
    global_step: int,
    end_step: int,
    rank: int,
    world_size: int,
) -> DataLoader:
    """Micro-batches for optimizer steps [global_step, end_step) of this rank, in the run's fixed order."""
    per_step = samples_per_step(args)
    sampler = GlobalIndexSampler(
        num_samples=(end_step - global_step) * per_step,
        start=global_step * per_step * world_size,
        rank=rank,
        world_size=world_size,
    )
    return DataLoader(
        dataset,
        batch_size=args.batch_size,
        sampler=sampler,
        collate_fn=collator,
        num_workers=args.workers,
        drop_last=True,
        # A private generator: worker seeding must not draw from the global torch RNG (dropout's), so
        # that a resumed run's RNG stream matches the uninterrupted one.
        generator=torch.Generator().manual_seed(args.seed),
        persistent_workers=False,
    )


def build_val_sets(
    args: TrainArgs,
    tokenizer: PreTrainedTokenizerBase,
    processor: PixelLMImageProcessor,
    token_ids: PixelLMTokenIds,
    num_image_tokens: int,
) -> dict[str, ValDataset]:
    """{name: validation set} for every entry of ``--val_dataset``."""
    sets = {}
    for name in args.val_names:
        sets[name] = build_val_dataset(name, args.dataset_dir, tokenizer, processor, token_ids, num_image_tokens, args.model_max_length)
        logger.info("validation set %s: %d images from %s", name, len(sets[name]), args.dataset_dir)
    return sets
