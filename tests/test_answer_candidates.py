"""Answer candidates (model/answer_candidates.py): the vote, the tie rule, the token draw, the config check,
the targets added from other candidates, and the rules end to end through generation and the predictor: the
kept answer is the best-scored candidate, its masks are that candidate's, an agreed target is spliced into it
with its words and mask, and a streamed answer is the kept one."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from forced_answers import ForcedAnswers, answer_ids
from model import PixelLMConfig
from model.answer_candidates import (
    CandidateAnswer,
    add_targets,
    agreed_additions,
    best_candidate,
    candidate_tokens,
    choose_candidate,
)
from model.target_confidence import mask_confidence
from model.tiny import build_tiny
from serving.predictor import PixelLMPredictor


def square(top: int, left: int, size: int, logit: float) -> torch.Tensor:
    """Mask logits [1, 12, 12]: ``logit`` on a square, -6 elsewhere."""
    mask = torch.full((1, 12, 12), -6.0)
    mask[0, top : top + size, left : left + size] = logit
    return mask


A, B, X = square(0, 0, 4, 5.0), square(6, 6, 4, 5.0), square(0, 6, 4, 5.0)  # confidence sigmoid(5) = 0.993
NEAR_A = square(0, 1, 4, 5.0)  # IoU with A 12/20 = 0.6: the same target
WEAK = square(6, 0, 4, 1.0)  # confidence 0.73
NONE = torch.zeros(0, 12, 12)


def test_the_answer_kept_is_the_one_whose_targets_the_candidates_share() -> None:
    """Four candidates: A named by all, B by two, X by one. At share 0.4 B counts for an answer (2/4 > 0.4) and X
    against it; at 0.6 B counts against too, and the answer with A alone is kept."""
    agree = [torch.cat([A]), torch.cat([A, B]), torch.cat([NEAR_A, B]), torch.cat([A, X])]
    assert choose_candidate(agree, 0.9, 0.4) == 1
    assert choose_candidate(agree, 0.9, 0.6) == 0
    assert choose_candidate([torch.cat([A, X]), torch.cat([A]), torch.cat([A, X])], 0.9, 0.4) == 0  # X: 2 of 3 votes


def test_a_weak_mask_costs_half_a_point_and_is_no_target() -> None:
    """A weak mask is no target at this threshold: the answer naming it loses to the same answer without it, and
    to no answer at all when the candidates agree on nothing; at a lower threshold it is a target like any other."""
    assert choose_candidate([torch.cat([A, WEAK]), torch.cat([A])], 0.9, 0.4) == 1
    assert choose_candidate([torch.cat([WEAK]), NONE], 0.9, 0.4) == 1
    assert choose_candidate([torch.cat([A, WEAK]), torch.cat([A, WEAK]), torch.cat([A])], 0.7, 0.4) == 0
    assert choose_candidate([torch.cat([A, torch.full((1, 12, 12), -6.0)]), torch.cat([A])], 0.5, 0.4) == 1  # an empty mask: confidence 0


def test_ties_go_to_the_earliest_candidate() -> None:
    assert best_candidate([1.0, 2.0, 2.0]) == 1
    assert best_candidate([0.5, 0.5, -0.5]) == 0
    assert best_candidate([-1.0, -0.5, -0.5, 0.0]) == 3


def test_first_candidate_is_greedy_the_others_are_drawn_reproducibly() -> None:
    """Flat logits: sampled rows spread over the vocabulary, the first row of each prompt stays greedy; the same
    seed draws the same tokens; a token at -inf is never drawn."""
    logits = torch.zeros(3 * 4, 50)
    logits[:, 7] = float("-inf")
    greedy = torch.full((12,), 3)
    draw = lambda seed: candidate_tokens(logits, greedy, 4, 1.0, torch.Generator().manual_seed(seed))  # noqa: E731
    tokens = draw(0)
    assert tokens[::4].tolist() == [3, 3, 3]
    sampled = torch.cat([draw(seed)[torch.arange(12) % 4 != 0] for seed in range(20)])
    assert 7 not in sampled.tolist() and len(set(sampled.tolist())) > 25
    assert torch.equal(draw(5), draw(5))


def test_a_target_enough_candidates_name_is_added_to_the_kept_answer() -> None:
    """Kept [A]; B named by two others: added at 2 votes, not at 3, taken where it follows another target."""
    candidates = [torch.cat([A]), torch.cat([B, A]), torch.cat([NEAR_A, B])]
    assert agreed_additions(candidates, 0, 0.9, 2) == [(2, 1)]
    assert agreed_additions(candidates, 0, 0.9, 3) == []
    assert agreed_additions(candidates, 0, 0.9, 0) == []
    assert agreed_additions([torch.cat([A]), torch.cat([B]), torch.cat([B]), torch.cat([B])], 0, 0.9, 2) == [(1, 0)]  # added once
    assert agreed_additions([torch.cat([A, B]), torch.cat([A, B]), torch.cat([B])], 0, 0.9, 1) == []  # the kept answer has it


def test_no_target_is_added_from_inventing_answers_weak_masks_or_to_an_empty_answer() -> None:
    """An answer naming a target no other names (X) does not vote; a weak or empty mask is no target; a kept
    answer that names nothing gets nothing, however many others agree."""
    assert agreed_additions([torch.cat([A]), torch.cat([A, B, X]), torch.cat([A, B])], 0, 0.9, 2) == []
    assert agreed_additions([torch.cat([A]), torch.cat([A, B, X]), torch.cat([A, B])], 0, 0.9, 1) == [(2, 1)]
    assert agreed_additions([torch.cat([A]), torch.cat([A, WEAK]), torch.cat([A, WEAK])], 0, 0.9, 2) == []
    assert agreed_additions([torch.cat([A]), torch.cat([WEAK]), torch.cat([WEAK])], 0, 0.7, 2) == [(1, 0)]
    empty = torch.full((1, 12, 12), -6.0)  # confident (sigmoid(-6) ~ 0) but claims no pixel
    assert agreed_additions([empty, torch.cat([B]), torch.cat([B])], 0, 0.9, 2) == []
    assert agreed_additions([NONE, torch.cat([B]), torch.cat([B])], 0, 0.9, 2) == []


def test_an_added_target_brings_its_words_and_its_group_moved_to_its_new_place() -> None:
    """Tokens: 1-7 words, 90 91 one seg group (K = 2), 0 eos. The kept answer's tail (". eos") stays last."""
    kept = CandidateAnswer([1, 2, 90, 91, 5, 0], A, [([2, 3], True)])
    source = CandidateAnswer([1, 3, 90, 91, 7, 1, 4, 90, 91, 5, 0], torch.cat([X, B]), [([2, 3], True), ([7, 8], True)])
    out = add_targets(kept, [kept, source], [(1, 1)])
    assert out.sequence == [1, 2, 90, 91, 7, 1, 4, 90, 91, 5, 0]
    assert out.groups == [([2, 3], True), ([7, 8], True)]
    torch.testing.assert_close(out.masks, torch.cat([A, B]))
    first = add_targets(kept, [kept, source], [(1, 0), (1, 1)])
    assert first.sequence == [1, 2, 90, 91, 1, 3, 90, 91, 7, 1, 4, 90, 91, 5, 0]
    assert first.groups == [([2, 3], True), ([6, 7], True), ([11, 12], True)]
    assert add_targets(kept, [kept, source], []) is kept


@pytest.mark.parametrize(
    ("field", "value"),
    [("answer_candidates", 0), ("candidate_temperature", 0.0), ("candidate_min_confidence", 1.5), ("candidate_vote_share", -0.1),
     ("candidate_add_votes", -1), ("candidate_add_votes", 2)],
)
def test_config_refuses_bad_candidate_settings(field: str, value: float) -> None:
    with pytest.raises(ValueError, match=f"{field} must be"):
        PixelLMConfig(**{field: value})


@pytest.fixture(scope="module")
def predictor(tmp_path_factory: pytest.TempPathFactory) -> PixelLMPredictor:
    folder = build_tiny(tmp_path_factory.mktemp("tiny"), seed=0, corpus=["the red circle and the blue star, none"], answer_candidates=3)
    return PixelLMPredictor.from_pretrained(folder)


SCRIPTS = ["the red circle{S} and the blue star{S}.", "the red circle{S}.", "none."]


def test_generation_keeps_the_best_scored_candidate_with_its_own_masks(predictor: PixelLMPredictor) -> None:
    """Two prompts, three forced candidates each (two targets, one, none). Every mask weak (threshold 1): the
    answer with no target scores best and is kept; every mask a target (threshold 0): the red circle, named by two
    of three, wins over no answer, so an answer with targets is kept. Each kept answer has the masks its candidate had alone, and the two prompts are
    chosen for independently (the second prompt's candidates come in the other order)."""
    model, tokenizer = predictor.model, predictor.tokenizer
    assert model.config.answer_candidates == 3
    image = np.random.default_rng(0).integers(0, 256, (50, 70, 3), dtype=np.uint8)
    predictor.set_image(image)
    scripts = [answer_ids(tokenizer, s) for s in SCRIPTS]
    longest = max(map(len, scripts))
    prompt = predictor.prompt_ids([], "Segment the circle and the star.", longest)
    kwargs = dict(image_features=predictor.session.features, original_sizes=torch.tensor([[50, 70]]), offset=torch.tensor([0, 2]),
                  max_new_tokens=longest)
    ids = torch.tensor([prompt, prompt])

    alone = []
    for script in scripts:
        with ForcedAnswers(model, [[script, script]]):
            alone.append(model.generate_with_masks(ids, answer_candidates=1, **kwargs))
    assert [a.chosen_candidate for a in alone] == [[0, 0]] * 3
    assert all(bool((mask_confidence(a.pred_masks[0]) < 1.0).all()) for a in alone)

    order = [[0, 1, 2], [2, 1, 0]]
    rows = [scripts[i] for prompt_order in order for i in prompt_order]
    for threshold in (1.0, 0.0):
        model.config.candidate_min_confidence = threshold
        try:
            with ForcedAnswers(model, [rows]):
                out = model.generate_with_masks(ids, **kwargs)
        finally:
            model.config.candidate_min_confidence = 0.9
        for q in range(2):
            kept = order[q][out.chosen_candidate[q]]
            expected = choose_candidate([alone[order[q][c]].pred_masks[q] for c in range(3)], threshold, model.config.candidate_vote_share)
            assert out.chosen_candidate[q] == expected
            assert (kept == 2) == (threshold == 1.0)
            assert out.sequences[q] == alone[kept].sequences[q] == scripts[kept]
            torch.testing.assert_close(out.pred_masks[q], alone[kept].pred_masks[q])


def test_generation_adds_the_target_two_candidates_agree_on(predictor: PixelLMPredictor, monkeypatch: pytest.MonkeyPatch) -> None:
    """Six forced candidates per prompt; an untrained decoder draws one mask for every group, so each group's
    mask is set by what its answer names (the red circle: A, the blue star: B). Prompt 1: four answers name the
    circle, two also the star (2 of 6: under the vote share, so "the red circle." is kept); with
    ``candidate_add_votes`` 2 the star is added with the words of the answer that names it second, and the result
    is that answer, its masks and groups; at 3 nothing is added. Prompt 2: the kept answer names nothing, and two
    answers naming the star do not change it. The predictor reads the added target's phrase."""
    model, tokenizer = predictor.model, predictor.tokenizer
    image = np.random.default_rng(3).integers(0, 256, (48, 48, 3), dtype=np.uint8)
    predictor.set_image(image)
    circle, both, star_first, star, none = (answer_ids(tokenizer, s) for s in (
        "the red circle{S}.", "the red circle{S} and the blue star{S}.", "the blue star{S} and the red circle{S}.", "the blue star{S}.", "none."))
    rows = [circle] * 4 + [star_first, both] + [none] * 4 + [star] * 2
    names = [["circle"]] * 4 + [["star", "circle"], ["circle", "star"]] + [[]] * 4 + [["star"]] * 2
    left, right = torch.full((48, 48), -6.0), torch.full((48, 48), -6.0)
    left[:, :20] = 6.0
    right[:, 28:] = 6.0
    drawn = {"circle": left, "star": right}
    original = model._masks_of_groups

    def scripted(states, state_positions, groups, *args):
        masks = original(states, state_positions, groups, *args)
        seen: dict[int, int] = {}
        out = []
        for mask, row in zip(masks, groups.rows.tolist()):
            out.append(drawn[names[row][seen.get(row, 0)]].to(mask))
            seen[row] = seen.get(row, 0) + 1
        return out

    monkeypatch.setattr(model, "_masks_of_groups", scripted)
    longest = max(map(len, rows))
    prompt = predictor.prompt_ids([], "Segment the circle and the star.", longest)
    kwargs = dict(image_features=predictor.session.features, original_sizes=torch.tensor([[48, 48]]), offset=torch.tensor([0, 2]),
                  max_new_tokens=longest, answer_candidates=6)
    for votes, expected in ((2, both), (3, circle)):
        monkeypatch.setattr(model.config, "candidate_add_votes", votes)
        with ForcedAnswers(model, [rows]):
            out = model.generate_with_masks(torch.tensor([prompt, prompt]), **kwargs)
        assert out.chosen_candidate == [0, 0]
        assert out.sequences == [expected, none]
        assert out.added_targets == [int(votes == 2), 0]
        seg_positions = [i for i, token in enumerate(expected) if token in model.config.seg_token_ids]
        k = model.config.tokens_per_target
        assert [positions for positions, _ in out.seg_groups[0]] == [seg_positions[j : j + k] for j in range(0, len(seg_positions), k)]
        torch.testing.assert_close(out.pred_masks[0], torch.stack([left, right][: 1 + int(votes == 2)]))
        assert out.pred_masks[1].shape[0] == 0

    monkeypatch.setattr(model.config, "candidate_add_votes", 2)
    monkeypatch.setattr(model.config, "answer_candidates", 6)
    with ForcedAnswers(model, [rows[:6]]):
        answer = predictor.ask("Segment the circle and the star.", max_new_tokens=longest)
    assert [t.phrase for t in answer.targets] == ["red circle", "blue star"]


def test_the_streamed_answer_is_the_kept_one(predictor: PixelLMPredictor) -> None:
    image = np.random.default_rng(1).integers(0, 256, (40, 40, 3), dtype=np.uint8)
    predictor.set_image(image)
    chunks: list[str] = []
    scripts = [answer_ids(predictor.tokenizer, s) for s in SCRIPTS]
    predictor.model.config.candidate_min_confidence = 1.0  # every mask weak: the answer with no target is kept
    try:
        with ForcedAnswers(predictor.model, [scripts]):
            answer = predictor.ask("Segment the circle and the star.", max_new_tokens=max(map(len, scripts)), on_text=chunks.append)
    finally:
        predictor.model.config.candidate_min_confidence = 0.9
    assert answer.text == "none." and answer.targets == []
    assert "".join(chunks) == answer.text


def test_free_answers_are_reproducible(predictor: PixelLMPredictor) -> None:
    """Unforced, the untrained model's sampled candidates are random tokens; the same call keeps the same answer,
    and the default draws are those of a generator seeded with 0."""
    model = predictor.model
    predictor.set_image(np.random.default_rng(2).integers(0, 256, (30, 30, 3), dtype=np.uint8))
    prompt = torch.tensor([predictor.prompt_ids([], "What is it?", 12)])
    kwargs = dict(image_features=predictor.session.features, original_sizes=torch.tensor([[30, 30]]), max_new_tokens=12,
                  answer_candidates=6)
    first, second = (model.generate_with_masks(prompt, **kwargs) for _ in range(2))
    seeded = model.generate_with_masks(prompt, generator=torch.Generator().manual_seed(0), **kwargs)
    assert first.sequences == second.sequences == seeded.sequences
    assert first.chosen_candidate == second.chosen_candidate == seeded.chosen_candidate
