"""Hungarian matching of a question's predicted masks to its ground-truth masks, and the pairs to score.

The cost of assigning prediction p to ground truth g is `bce_weight · BCE(p, g) + dice_weight · Dice(p, g)`,
both computed on a fixed set of sampled points shared by all masks, on the points where g is not 255:
- BCE(p, g): mean over those points of BCE-with-logits;
- Dice(p, g) = 1 − (2 Σ σ(p)·g + 1) / (Σ σ(p) + Σ g + 1).
The points come from a torch.Generator seeded with `MatchingConfig.seed`, so matching is deterministic.
"""

from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment

from .metrics import IGNORE_LABEL, MaskLike, as_tensor


@dataclass(frozen=True)
class MatchingConfig:
    """Matching settings: how many points the cost samples, their seed, and the weights of the two costs."""

    num_points: int = 12544
    seed: int = 0
    bce_weight: float = 1.0
    dice_weight: float = 1.0

    def __post_init__(self) -> None:
        if self.num_points <= 0:
            raise ValueError(f"MatchingConfig.num_points must be positive, got {self.num_points}")


def sample_points(config: MatchingConfig) -> torch.Tensor:
    """The matching points, float [num_points, 2] of (x, y) in [0, 1]², identical on every call."""
    generator = torch.Generator(device="cpu").manual_seed(config.seed)
    return torch.rand(config.num_points, 2, generator=generator)


def _sample(masks: torch.Tensor, points: torch.Tensor, mode: str) -> torch.Tensor:
    """Values of masks [M, H, W] at points [S, 2] in [0, 1]² → [M, S]."""
    grid = (points * 2 - 1).to(masks.device).view(1, 1, -1, 2)
    return F.grid_sample(masks.unsqueeze(0), grid, mode=mode, align_corners=False)[0, :, 0, :]


def _check_shapes(pred_logits: torch.Tensor, gt_masks: torch.Tensor) -> None:
    if pred_logits.dim() != 3 or gt_masks.dim() != 3:
        raise ValueError(
            f"expected pred_logits [P, H, W] and gt_masks [G, H, W], got {tuple(pred_logits.shape)} and "
            f"{tuple(gt_masks.shape)}; pass [0, H, W] for a side without masks"
        )
    if pred_logits.shape[1:] != gt_masks.shape[1:]:
        raise ValueError(
            f"predicted masks are {tuple(pred_logits.shape[1:])} but GT masks are "
            f"{tuple(gt_masks.shape[1:])}: resize the logits to the GT size "
            "(PixelLMImageProcessor.postprocess_masks) first"
        )


def matching_cost(
    pred_logits: MaskLike, gt_masks: MaskLike, config: MatchingConfig = MatchingConfig()
) -> torch.Tensor:
    """Cost matrix, float32 [P, G] on the CPU, for pred_logits [P, H, W] and gt_masks [G, H, W] (0/1/255)."""
    logits = as_tensor(pred_logits, "pred_logits").float()
    gt = as_tensor(gt_masks, "gt_masks").to(logits.device).float()
    _check_shapes(logits, gt)
    if logits.shape[0] == 0 or gt.shape[0] == 0:
        return torch.zeros(logits.shape[0], gt.shape[0])
    points = sample_points(config)
    # GT values are sampled with nearest so that 255 never blends into 0/1.
    gt_points = _sample(gt, points, "nearest")
    logit_points = _sample(logits, points, "bilinear")
    valid = (gt_points != IGNORE_LABEL).float()
    target = (gt_points == 1).float()
    background = valid - target
    num_valid = valid.sum(1).clamp(min=1)

    # BCE-with-logits is softplus(-x) against a 1 and softplus(x) against a 0.
    bce = (F.softplus(-logit_points) @ target.T + F.softplus(logit_points) @ background.T) / num_valid
    prob = logit_points.sigmoid()
    dice = 1 - (2 * prob @ target.T + 1) / (prob @ valid.T + target.sum(1) + 1)
    return (config.bce_weight * bce + config.dice_weight * dice).cpu()


def hungarian_match(
    pred_logits: MaskLike, gt_masks: MaskLike, config: MatchingConfig = MatchingConfig()
) -> list[tuple[int, int]]:
    """Minimum-cost one-to-one assignment of predictions [P, H, W] to GT masks [G, H, W].

    Returns min(P, G) pairs (pred index, gt index), sorted by pred index.
    """
    cost = matching_cost(pred_logits, gt_masks, config)
    if cost.numel() == 0:
        return []
    rows, cols = linear_sum_assignment(cost.double().numpy())
    return [(int(r), int(c)) for r, c in zip(rows, cols)]


class MaskPair(NamedTuple):
    """One scored pair: prediction bool [H, W], GT [H, W] (0/1/255), and whether it is an unmatched pair (IoU 0)."""

    pred: torch.Tensor
    gt: torch.Tensor
    unmatched: bool


def question_mask_pairs(
    pred_logits: MaskLike, gt_masks: MaskLike, config: MatchingConfig = MatchingConfig()
) -> list[MaskPair]:
    """The pairs that score one question.

    pred_logits [P, H, W], gt_masks [G, H, W] (0/1/255). Matched pairs compare (logit > 0) with their GT;
    each unmatched GT is paired with an empty prediction (a missed target), each unmatched prediction,
    thresholded, with an empty GT (an extra target); both kinds are flagged ``unmatched`` and score IoU 0,
    even when the extra prediction is empty after thresholding.
    Order: GT masks by index with their partner, then unmatched predictions by index.
    """
    logits = as_tensor(pred_logits, "pred_logits")
    gt = as_tensor(gt_masks, "gt_masks").to(logits.device)
    _check_shapes(logits, gt)
    matches = hungarian_match(logits, gt, config)
    pred_of_gt = {g: p for p, g in matches}
    matched_preds = set(pred_of_gt.values())
    binary = logits > 0
    empty_pred = torch.zeros(gt.shape[1:], dtype=torch.bool, device=logits.device)
    empty_gt = torch.zeros(gt.shape[1:], dtype=gt.dtype, device=logits.device)

    pairs = [
        MaskPair(binary[pred_of_gt[g]], gt[g], False) if g in pred_of_gt else MaskPair(empty_pred, gt[g], True)
        for g in range(gt.shape[0])
    ]
    pairs += [MaskPair(binary[p], empty_gt, True) for p in range(logits.shape[0]) if p not in matched_preds]
    return pairs

