"""Answer candidates (model/answer_candidates.py): the vote, the tie rule, the token draw, the config check,
and the rule end to end through generation and the predictor: the kept answer is the best-scored candidate,
its masks are that candidate's, and a streamed answer is the kept one."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from forced_answers import ForcedAnswers, answer_ids
from model import PixelLMConfig
from model.answer_candidates import best_candidate, candidate_tokens, choose_candidate
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


@pytest.mark.parametrize(
    ("field", "value"), [("answer_candidates", 0), ("candidate_temperature", 0.0), ("candidate_min_confidence", 1.5), ("candidate_vote_share", -0.1)]
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
