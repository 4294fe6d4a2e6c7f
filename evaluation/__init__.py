"""Evaluation: mask metrics (gIoU, cIoU, N-acc, T-acc, target counts), Hungarian matching of predicted to GT masks, the eval loop."""

from .evaluate import EvalOptions, evaluate
from .matching import MaskPair, MatchingConfig, hungarian_match, matching_cost, question_mask_pairs, sample_points
from .metrics import (
    IGNORE_LABEL,
    TARGET_METRICS,
    IoUAccumulator,
    PairCounts,
    QuestionTargets,
    all_reduce_,
    format_metrics,
    pair_counts,
    question_targets,
    teacher_forced_targets,
)

__all__ = [
    "EvalOptions",
    "IGNORE_LABEL",
    "IoUAccumulator",
    "MatchingConfig",
    "PairCounts",
    "QuestionTargets",
    "TARGET_METRICS",
    "all_reduce_",
    "evaluate",
    "format_metrics",
    "hungarian_match",
    "matching_cost",
    "pair_counts",
    "question_mask_pairs",
    "question_targets",
    "teacher_forced_targets",
    "MaskPair",
    "sample_points",
]
