"""Evaluation: mask metrics (gIoU, cIoU, N-acc, T-acc), Hungarian matching of predicted to GT masks, the eval loop."""

from .evaluate import EvalOptions, evaluate
from .matching import MaskPair, MatchingConfig, hungarian_match, matching_cost, question_mask_pairs, sample_points
from .metrics import IGNORE_LABEL, IoUAccumulator, PairCounts, all_reduce_, pair_counts

__all__ = [
    "EvalOptions",
    "IGNORE_LABEL",
    "IoUAccumulator",
    "MatchingConfig",
    "PairCounts",
    "all_reduce_",
    "evaluate",
    "hungarian_match",
    "matching_cost",
    "pair_counts",
    "question_mask_pairs",
    "MaskPair",
    "sample_points",
]
