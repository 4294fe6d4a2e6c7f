"""A decoding rule: answer each prompt several times and keep the answer whose targets the answers agree on.

A small LLM that lists targets often names too few ("the red star" where there are two stars) or names one
that is not there ("the blue star" beside a blue circle), and its sampled answers err in other ways than its
greedy one. With ``answer_candidates`` = n > 1 in a model's config, generation answers each prompt n times in
one batch, the greedy answer and n - 1 answers sampled at ``candidate_temperature``, decodes every candidate's
masks, and keeps the answer its targets vote for (self-consistency, over masks instead of over text):

    score = sum over the candidate's targets of (votes / n - candidate_vote_share) - 0.5 * (weak masks)

A target is a mask whose confidence (``model/target_confidence.py``) is at least ``candidate_min_confidence``
(weaker ones are the weak masks); two masks are the same target when their IoU is at least 0.5, and a
target's votes are the candidates, its own included, that have it. So a target named by more than
``candidate_vote_share`` of the answers counts for the answer that names it, one that few name counts against,
and a mask the decoder is unsure of costs half a point. Ties go to the earliest candidate, the greedy answer
first. The draws come from a generator seeded with 0 on every call unless one is given: the same batch of
prompts gets the same answers.
"""

from __future__ import annotations

import torch
from transformers.generation.streamers import BaseStreamer

from .target_confidence import mask_confidence

SAME_TARGET_IOU = 0.5
WEAK_PENALTY = 0.5


def expand_rows(x: torch.Tensor, n: int) -> torch.Tensor:
    """[Q, ...] -> [Q * n, ...]: each row repeated n times in place (row q's candidates are rows q*n .. q*n + n-1)."""
    return x.repeat_interleave(n, dim=0)


def candidate_tokens(
    logits: torch.Tensor, greedy: torch.Tensor, n: int, temperature: float, generator: torch.Generator
) -> torch.Tensor:
    """logits [Q * n, V] (tokens that must not come already at -inf), greedy [Q * n] their argmax -> tokens
    [Q * n]: the greedy token for each prompt's first candidate, a token sampled at ``temperature`` for the others."""
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    sampled = torch.multinomial(probs, 1, generator=generator).squeeze(1)
    is_greedy = torch.arange(logits.shape[0], device=logits.device) % n == 0
    return torch.where(is_greedy, greedy, sampled)


def choose_candidate(candidates: list[torch.Tensor], min_confidence: float, vote_share: float) -> int:
    """The mask logits [N_c, H, W] of each of a prompt's candidates -> the index of the one to keep."""
    targets, weak = zip(*(_targets(masks, min_confidence) for masks in candidates))
    n = len(candidates)
    owner = torch.cat([torch.full((len(t),), c, dtype=torch.long) for c, t in enumerate(targets)])
    scores = -WEAK_PENALTY * torch.tensor(weak, dtype=torch.float32)
    if owner.numel():
        same = (_pairwise_iou(torch.cat(targets)) >= SAME_TARGET_IOU).float().cpu()
        votes = (same @ torch.nn.functional.one_hot(owner, n).float() > 0).sum(1)
        scores.index_add_(0, owner, votes / n - vote_share)
    return best_candidate(scores.tolist())


def _targets(masks: torch.Tensor, min_confidence: float) -> tuple[torch.Tensor, int]:
    """mask logits [N, H, W] -> (the distinct confident masks, flat bool [D, H*W] in order; the number of weak ones)."""
    confident = mask_confidence(masks) >= min_confidence
    claimed = (masks > 0).flatten(1)[confident]
    iou = _pairwise_iou(claimed).tolist()
    kept: list[int] = []
    for i in range(len(iou)):
        if all(iou[i][j] < SAME_TARGET_IOU for j in kept):
            kept.append(i)
    return claimed[kept], int((~confident).sum())


def _pairwise_iou(masks: torch.Tensor) -> torch.Tensor:
    """Flat bool masks [N, P] -> IoU of every pair [N, N] (1 where both are empty)."""
    intersection = masks.float() @ masks.float().T
    area = masks.sum(1)
    union = area[:, None] + area[None] - intersection
    return torch.where(union > 0, intersection / union.clamp(min=1), torch.ones_like(union))


def best_candidate(scores: list[float]) -> int:
    """Index of the highest score, the earliest on ties (candidate 0 is the greedy answer)."""
    return max(range(len(scores)), key=lambda i: (scores[i], -i))


def replay(streamer: BaseStreamer, sequences: list[list[int]], eos: int) -> None:
    """Give a streamer the kept answers as generation would have: ``put(tokens [Q])`` per step, a finished
    answer repeating eos, then ``end()``."""
    steps = max(len(seq) for seq in sequences)
    for t in range(steps):
        streamer.put(torch.tensor([seq[t] if t < len(seq) else eos for seq in sequences]))
    streamer.end()
