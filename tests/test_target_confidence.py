"""The confidence of a target's mask and the decoding rule that withdraws weak targets (model/target_confidence.py):
the formula, the split, the config check, and the rule end to end through generation and the predictor."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from forced_answers import ForcedAnswers, answer_ids
from model import PixelLMConfig
from model.target_confidence import mask_confidence, split_by_confidence
from model.tiny import build_tiny
from serving.predictor import PixelLMPredictor


def test_confidence_is_the_mean_probability_over_the_claimed_pixels() -> None:
    logits = torch.full((3, 4, 5), -3.0)
    logits[0, :2, :2] = torch.tensor([[2.0, 0.5], [1.0, 4.0]])
    logits[1, 0, 0] = 0.0  # logit 0 claims nothing: the mask is empty
    logits[2] = 6.0
    expected = torch.sigmoid(torch.tensor([2.0, 0.5, 1.0, 4.0])).mean()
    confidence = mask_confidence(logits)
    assert confidence.dtype == torch.float32
    torch.testing.assert_close(confidence, torch.stack([expected, torch.tensor(0.0), torch.sigmoid(torch.tensor(6.0))]))
    assert mask_confidence(torch.zeros(0, 4, 5)).shape == (0,)
    assert mask_confidence(logits.to(torch.bfloat16))[2] == pytest.approx(float(torch.sigmoid(torch.tensor(6.0))), abs=1e-3)


def test_split_keeps_order_and_reports_what_it_withdraws() -> None:
    logits = torch.full((3, 2, 2), -1.0)
    logits[0, 0, 0], logits[1, 0, 0], logits[2] = 3.0, 0.5, 2.0
    groups = [([0, 1], True), ([4, 5], True), ([8, 9], False)]
    masks, kept, confidence, withdrawn = split_by_confidence(logits, groups, 0.8)
    assert kept == [groups[0], groups[2]]
    torch.testing.assert_close(masks, logits[[0, 2]])
    torch.testing.assert_close(confidence, torch.sigmoid(torch.tensor([3.0, 2.0])))
    assert [positions for positions, _ in withdrawn] == [[4, 5]]
    assert withdrawn[0][1] == pytest.approx(float(torch.sigmoid(torch.tensor(0.5))))
    masks, kept, _, withdrawn = split_by_confidence(torch.full((2, 2, 2), -1.0), groups[:2], 0.0)
    assert kept == groups[:2] and masks.shape[0] == 2 and withdrawn == []  # 0: off, empty masks kept too


@pytest.mark.parametrize("value", [-0.1, 1.0])
def test_config_refuses_a_threshold_outside_0_1(value: float) -> None:
    with pytest.raises(ValueError, match="min_target_confidence must be in"):
        PixelLMConfig(min_target_confidence=value)


@pytest.fixture(scope="module")
def predictor(tmp_path_factory: pytest.TempPathFactory) -> PixelLMPredictor:
    folder = build_tiny(tmp_path_factory.mktemp("tiny"), seed=0, corpus=["the red circle and the blue star"], min_target_confidence=0.5)
    return PixelLMPredictor.from_pretrained(folder)


def test_generation_withdraws_the_weaker_target_and_the_answer_names_it(predictor: PixelLMPredictor) -> None:
    """Two forced targets; a threshold between their confidences withdraws the weaker one: its mask is not
    returned, the other's is unchanged, and the predictor's answer warns about it by name. The model folder
    carries the rule; 0 turns it off."""
    model, tokenizer = predictor.model, predictor.tokenizer
    assert model.config.min_target_confidence == 0.5
    image = np.random.default_rng(0).integers(0, 256, (60, 90, 3), dtype=np.uint8)
    predictor.set_image(image)
    script = answer_ids(tokenizer, "the red circle{S} and the blue star{S}.")
    prompt = torch.tensor([predictor.prompt_ids([], "Segment the circle and the star.", len(script))])
    kwargs = dict(image_features=predictor.session.features, original_sizes=torch.tensor([[60, 90]]), max_new_tokens=len(script))
    with ForcedAnswers(model, [[script]]):
        every = model.generate_with_masks(prompt, min_target_confidence=0.0, **kwargs)
    confidence = every.target_confidence[0]
    assert every.withdrawn_groups == [[]] and confidence.shape == (2,)
    torch.testing.assert_close(confidence, mask_confidence(every.pred_masks[0]))
    weak = int(confidence.argmin())
    threshold = float(confidence.mean())
    assert confidence.min() < threshold < confidence.max()

    model.config.min_target_confidence = threshold  # generation and the predictor read it from the config
    try:
        with ForcedAnswers(model, [[script], [script]]):
            out = model.generate_with_masks(prompt, **kwargs)
            answer = predictor.ask("Segment the circle and the star.", max_new_tokens=len(script))
    finally:
        model.config.min_target_confidence = 0.5
    assert out.sequences == every.sequences
    assert out.seg_groups[0] == [every.seg_groups[0][1 - weak]]
    torch.testing.assert_close(out.pred_masks[0], every.pred_masks[0][[1 - weak]])
    assert [positions for positions, _ in out.withdrawn_groups[0]] == [every.seg_groups[0][weak][0]]
    assert out.withdrawn_groups[0][0][1] == pytest.approx(float(confidence[weak]))

    names = ["red circle", "blue star"]
    assert [t.phrase for t in answer.targets] == [names[1 - weak]]
    assert len(answer.warnings) == 1
    assert f"'{names[weak]}': withdrawn" in answer.warnings[0] and "no mask" in answer.warnings[0]
    assert answer.text == "the red circle and the blue star."
