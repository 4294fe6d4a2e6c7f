"""Streamed answer text: the pieces add up to Answer.text, nothing sent is ever taken back, and a streamed
answer equals the same answer not streamed."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest

from forced_answers import ForcedAnswers, answer_ids
from model.tiny import build_tiny
from serving.answer_parsing import settled_display_text, tidy_spacing
from serving.predictor import PixelLMPredictor


@pytest.fixture(scope="module")
def predictor(tmp_path_factory: pytest.TempPathFactory) -> PixelLMPredictor:
    return PixelLMPredictor.from_pretrained(build_tiny(tmp_path_factory.mktemp("tiny"), seed=0))


def test_settled_text_is_a_prefix_of_every_continuation() -> None:
    """For random strings of letters, spaces and the punctuation the tidy rules treat specially, the settled
    text of every prefix is a prefix of the final display text."""
    rng = random.Random(0)
    alphabet = "ab  ,,..;:!?)\n\ufffd"
    for _ in range(3000):
        raw = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 14)))
        final, _ = tidy_spacing(raw)
        for end in range(len(raw) + 1):
            settled = settled_display_text(raw[:end])
            assert final.startswith(settled), (raw, end, settled, final)


def test_settled_text_holds_back_what_may_change() -> None:
    assert settled_display_text("The cat, and") == "The cat"
    assert settled_display_text("The cat, and the") == "The cat, and"
    assert settled_display_text("The cat,") == "The"
    assert settled_display_text("The cat , the dog .") == "The cat, the dog"
    assert settled_display_text("... , ") == ""
    assert settled_display_text("Caf\ufffd au lait") == ""


def collect(predictor: PixelLMPredictor, image: np.ndarray, question: str, max_new_tokens: int) -> tuple[list[str], object]:
    chunks: list[str] = []
    predictor.set_image(image)
    answer = predictor.ask(question, max_new_tokens=max_new_tokens, on_text=chunks.append)
    return chunks, answer


def test_free_generation_streams_exactly_the_answer_text(predictor: PixelLMPredictor) -> None:
    """The untrained model's answers are random tokens (odd bytes, punctuation, stray seg tokens): a fuzz test."""
    rng = np.random.default_rng(3)
    for i in range(6):
        image = rng.integers(0, 256, (40 + 7 * i, 50, 3), dtype=np.uint8)
        chunks, answer = collect(predictor, image, f"Question number {i}: what is it?", 40)
        assert "".join(chunks) == answer.text
        assert all(chunks)


@pytest.mark.parametrize(
    "script",
    ["The chili{S} and the curry{S}.", "They are{S},{S} and{S}.", "{S}.", "Sure , it is{S} .", "No targets here at all, sorry!"],
)
def test_forced_answers_stream_their_display_text(predictor: PixelLMPredictor, script: str) -> None:
    image = np.random.default_rng(4).integers(0, 256, (30, 40, 3), dtype=np.uint8)
    with ForcedAnswers(predictor.model, [[answer_ids(predictor.tokenizer, script)]]):
        chunks, answer = collect(predictor, image, "Segment them.", 60)
    assert "".join(chunks) == answer.text
    if answer.text.count(" ") > 2:
        assert len(chunks) > 1  # the text came in pieces, before the answer was complete


def test_streamed_answer_equals_the_answer_not_streamed(predictor: PixelLMPredictor, tmp_path: Path) -> None:
    image = np.random.default_rng(5).integers(0, 256, (50, 70, 3), dtype=np.uint8)
    script = answer_ids(predictor.tokenizer, "The pan{S} and the lid{S}.")
    with ForcedAnswers(predictor.model, [[script], [script]]):
        predictor.set_image(image)
        plain = predictor.ask("Segment the pan and the lid.", max_new_tokens=40)
        chunks, streamed = collect(predictor, image, "Segment the pan and the lid.", 40)
    assert "".join(chunks) == streamed.text == plain.text
    assert streamed.token_ids == plain.token_ids and streamed.warnings == plain.warnings
    assert len(streamed.targets) == 2
    for a, b in zip(streamed.targets, plain.targets):
        assert (a.phrase, a.bbox, a.span, a.anchor) == (b.phrase, b.bbox, b.span, b.anchor)
        assert a.score == b.score
        np.testing.assert_array_equal(a.mask, b.mask)


def test_a_failing_callback_does_not_stop_the_answer(predictor: PixelLMPredictor) -> None:
    image = np.random.default_rng(6).integers(0, 256, (30, 40, 3), dtype=np.uint8)

    def broken(chunk: str) -> None:
        raise BrokenPipeError("the reader went away")

    predictor.set_image(image)
    with ForcedAnswers(predictor.model, [[answer_ids(predictor.tokenizer, "The pan{S} is here, and the lid too.")]]):
        answer = predictor.ask("Segment the pan.", max_new_tokens=40, on_text=broken)
    assert answer.text == "The pan is here, and the lid too." and len(answer.targets) == 1
