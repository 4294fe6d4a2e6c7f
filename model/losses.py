"""Mask losses of PixelLM: per-mask BCE and Dice, and the target-refinement loss. Targets are 0/1 with 255 = ignore.

Each function takes the logits and targets of ONE image's masks: logits [N, H, W] and targets [N, H, W],
and returns the per-mask loss [N]; the caller averages over all masks of the batch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

IGNORE_LABEL = 255
DICE_SCALE = 1000.0
DICE_EPS = 1e-6


def _valid_and_binary(targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    valid = (targets != IGNORE_LABEL).float()
    return valid, (targets == 1).float()


def bce_per_mask(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean over non-ignored pixels of BCE-with-logits, per mask -> [N]."""
    valid, t = _valid_and_binary(targets)
    bce = F.binary_cross_entropy_with_logits(logits.float(), t, reduction="none")
    return (bce * valid).flatten(1).sum(1) / valid.flatten(1).sum(1).clamp(min=1.0)


def dice_per_mask(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """1 - (2 sum(p t) + eps) / (sum p + sum t + eps) on sigmoid probabilities, sums / 1000, per mask -> [N]."""
    valid, t = _valid_and_binary(targets)
    p = torch.sigmoid(logits.float()) * valid
    inter = (p * t).flatten(1).sum(1) / DICE_SCALE
    total = (p.flatten(1).sum(1) + t.flatten(1).sum(1)) / DICE_SCALE
    return 1 - (2 * inter + DICE_EPS) / (total + DICE_EPS)


def refinement_per_mask(logits: torch.Tensor, targets: torch.Tensor, counts: list[int]) -> torch.Tensor:
    """Target-refinement loss: extra BCE on pixels that >= 2 predicted masks of the same question claim.

    logits/targets: [N, H, W], the masks of one image; counts: targets per question of that image
    (summing to N). Per mask: mean over non-ignored pixels of overlap * BCE -> [N]. The overlap weight
    comes from thresholded predictions and carries no gradient.
    """
    valid, t = _valid_and_binary(targets)
    bce = F.binary_cross_entropy_with_logits(logits.float(), t, reduction="none")
    weights = torch.zeros_like(bce)
    start = 0
    for n in counts:
        if n >= 2:
            claimed = (logits[start : start + n].detach() > 0).sum(0) >= 2
            weights[start : start + n] = claimed.float()
        start += n
    return (bce * weights * valid).flatten(1).sum(1) / valid.flatten(1).sum(1).clamp(min=1.0)
