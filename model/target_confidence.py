"""How sure the pixel decoder is of a target's mask, and the decoding rule built on it.

A target's confidence is the mean probability (sigmoid of the mask logits) over the pixels its mask claims
(logit > 0); an empty mask has confidence 0. Masks of targets that are in the image are confident almost
everywhere they claim; a target the LLM names that is not there (a "blue star" beside a blue circle, any
target of a question that has none) mostly gets a weak or empty mask. With ``min_target_confidence`` in a
model's config, generation withdraws the seg groups under it: their masks are not returned, and the answer
reports them (``PixelLMGenerateOutput.withdrawn_groups``) so that the text can say which name has no mask.
"""

from __future__ import annotations

import torch


def mask_confidence(logits: torch.Tensor) -> torch.Tensor:
    """logits [N, H, W] -> float32 [N]: mean sigmoid over each mask's pixels with logit > 0 (0 where none)."""
    claimed = logits > 0
    probs = torch.sigmoid(logits.float()) * claimed
    area = claimed.flatten(1).sum(1)
    return probs.flatten(1).sum(1) / area.clamp(min=1)


def split_by_confidence(
    masks: torch.Tensor, groups: list[tuple[list[int], bool]], threshold: float
) -> tuple[torch.Tensor, list[tuple[list[int], bool]], torch.Tensor, list[tuple[list[int], float]]]:
    """One answer's masks [N, H, W] and seg groups (mask n is group n's) -> (kept masks, kept groups,
    confidence of the kept [N_kept], withdrawn groups as (token positions, confidence)). threshold 0 keeps all
    (the masks are returned as they are, not copied)."""
    confidence = mask_confidence(masks)
    if threshold <= 0:
        return masks, groups, confidence, []
    keep = confidence >= threshold
    flags = keep.tolist()
    withdrawn = [(positions, c) for (positions, _), c, k in zip(groups, confidence.tolist(), flags) if not k]
    kept_groups = [group for group, k in zip(groups, flags) if k]
    return masks[keep], kept_groups, confidence[keep], withdrawn
