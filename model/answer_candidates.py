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

The kept answer often still misses a target that other answers name (two stars, of which it names one). With
``candidate_add_votes`` = k > 0, a kept answer that names at least one target gets every further target that
at least k answers name, its words and seg group taken from one of them (``agreed_additions``,
``add_targets``). Only answers that name no target alone vote here: an answer with a target no other answer
names is likely inventing, and its other targets are not trusted either. A kept answer with no target gets
nothing: "There is no triangle here." stays an answer without masks.
"""

from __future__ import annotations

from dataclasses import dataclass

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


@dataclass(frozen=True)
class CandidateAnswer:
    """One answer: its tokens (ending at eos when it ended), its mask logits [N, H, W] and its N seg groups
    (token positions of the group's K tokens, well formed), mask n being group n's."""

    sequence: list[int]
    masks: torch.Tensor
    groups: list[tuple[list[int], bool]]


def agreed_additions(candidates: list[torch.Tensor], kept: int, min_confidence: float, add_votes: int) -> list[tuple[int, int]]:
    """The mask logits [N_c, H, W] of each of a prompt's candidates and the kept one's index -> the targets to
    add to the kept answer, as (candidate, mask index) in the order found.

    A target is a confident (>= ``min_confidence``), non-empty mask; its voters are the candidates that have a
    mask of it (IoU >= 0.5) and no target named by them alone. It is added when it has at least ``add_votes``
    voters and neither the kept answer nor an earlier addition has it. Where a voter names it after another
    target, that voter's mask and words are taken (they begin with a joining word: "and the red star").
    """
    if add_votes < 1:
        return []
    owner, index, flat = [], [], []
    for c, masks in enumerate(candidates):
        claimed = (masks > 0).flatten(1)
        for i in ((mask_confidence(masks) >= min_confidence) & claimed.any(1)).nonzero()[:, 0].tolist():
            owner.append(c)
            index.append(i)
            flat.append(claimed[i])
    if kept not in owner:
        return []
    kept_masks = (candidates[kept] > 0).flatten(1)
    iou = _pairwise_iou(torch.cat([torch.stack(flat), kept_masks])) >= SAME_TARGET_IOU
    same, in_kept = iou[: len(flat), : len(flat)].cpu(), iou[: len(flat), len(flat) :].any(1).tolist()
    havers = [{owner[b] for b in row.nonzero()[:, 0].tolist()} for row in same]
    lone = {owner[a] for a, h in enumerate(havers) if len(h) == 1}
    taken: list[int] = []
    additions = []
    for a, c in enumerate(owner):
        voters = havers[a] - lone
        if c == kept or len(voters) < add_votes or in_kept[a] or bool(same[a, taken].any()):
            continue
        voted = [b for b in same[a].nonzero()[:, 0].tolist() if owner[b] in voters]
        pick = next((b for b in voted if index[b] > 0), voted[0])
        additions.append((owner[pick], index[pick]))
        taken.append(a)
    return additions


def add_targets(answer: CandidateAnswer, sources: list[CandidateAnswer], additions: list[tuple[int, int]]) -> CandidateAnswer:
    """``answer`` with each addition (source, mask index) spliced in after its last seg group: the source's
    tokens from the end of the group before that target (or the start of the answer) to the end of its group,
    its mask appended to the masks and its group, moved to its new positions, to the groups."""
    if not additions:
        return answer
    cut = max((positions[-1] + 1 for positions, _ in answer.groups), default=len(answer.sequence))
    middle: list[int] = []
    groups = list(answer.groups)
    for c, i in additions:
        source = sources[c]
        start = source.groups[i - 1][0][-1] + 1 if i > 0 else 0
        positions, well_formed = source.groups[i]
        shift = cut + len(middle) - start
        groups.append(([p + shift for p in positions], well_formed))
        middle += source.sequence[start : positions[-1] + 1]
    masks = torch.cat([answer.masks] + [sources[c].masks[i : i + 1] for c, i in additions])
    return CandidateAnswer(answer.sequence[:cut] + middle + answer.sequence[cut:], masks, groups)


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
