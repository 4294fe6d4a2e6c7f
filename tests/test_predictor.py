"""PixelLMPredictor on a tiny random model: answers are forced token scripts (tests/forced_answers.py)
where the test needs seg groups; the generation, KV cache and mask decoding are the real ones."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from forced_answers import ForcedAnswers, answer_ids
from model.seg_codebook import find_seg_groups
from model.tiny import build_tiny
from model.tokens import seg_token_names
from serving.answer_parsing import extract_phrase, parse_answer, tidy_spacing
from serving.export import mask_bbox
from serving.predictor import PixelLMPredictor, QuestionError


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny(tmp_path_factory.mktemp("tiny"), seed=0)


@pytest.fixture(scope="module")
def predictor(tiny_dir: Path) -> PixelLMPredictor:
    return PixelLMPredictor.from_pretrained(tiny_dir)


@pytest.fixture
def image() -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (60, 90, 3), dtype=np.uint8)


def test_ask_gives_text_and_one_mask_per_named_target(predictor: PixelLMPredictor, image: np.ndarray) -> None:
    predictor.set_image(image)
    script = answer_ids(predictor.tokenizer, "The chili{S} and the curry{S}.")
    with ForcedAnswers(predictor.model, [[script]]):
        answer = predictor.ask("Segment the chili and the curry.", max_new_tokens=60)
    assert answer.text == "The chili and the curry."
    assert [t.phrase for t in answer.targets] == ["chili", "curry"]
    assert answer.token_ids == script
    assert answer.warnings == []
    for target in answer.targets:
        assert target.mask.dtype == bool and target.mask.shape == (60, 90)
        assert target.bbox == tuple(mask_bbox(target.mask))
        assert (0.5 < target.score <= 1.0) if target.mask.any() else target.score == 0.0
        assert answer.text[target.span[0] : target.span[1]] == target.phrase


def test_masks_are_the_model_logits_thresholded_at_zero(predictor: PixelLMPredictor, image: np.ndarray) -> None:
    """Mask = logit > 0 and score = mean sigmoid inside, checked against a direct generate_with_masks call."""
    script = answer_ids(predictor.tokenizer, "A dog{S}.")
    predictor.set_image(image)
    with ForcedAnswers(predictor.model, [[script], [script]]):
        answer = predictor.ask("Segment the dog.", max_new_tokens=20)
        ids = torch.tensor([predictor.prompt_ids([], "Segment the dog.", 20)])
        out = predictor.model.generate_with_masks(
            ids, image_features=predictor.session.features, original_sizes=torch.tensor([[60, 90]]), max_new_tokens=20
        )
    logits = out.pred_masks[0][0]
    np.testing.assert_array_equal(answer.targets[0].mask, (logits > 0).numpy())
    expected = torch.sigmoid(logits[logits > 0]).mean().item() if (logits > 0).any() else 0.0
    assert answer.targets[0].score == pytest.approx(expected, abs=1e-6)


def test_follow_up_reuses_the_embedding_and_sees_the_history(
    predictor: PixelLMPredictor, image: np.ndarray, monkeypatch: pytest.MonkeyPatch
) -> None:
    encodes, prompts = [], []
    encode, generate = predictor.model.encode_images, predictor.model.generate_with_masks
    monkeypatch.setattr(predictor.model, "encode_images", lambda *a, **k: encodes.append(1) or encode(*a, **k))
    monkeypatch.setattr(predictor.model, "generate_with_masks", lambda **k: prompts.append(k["input_ids"]) or generate(**k))
    first = answer_ids(predictor.tokenizer, "The cat{S}.")
    second = answer_ids(predictor.tokenizer, "The dog{S}.")
    predictor.set_image(image)
    with ForcedAnswers(predictor.model, [[first], [second]]):
        a1 = predictor.ask("Segment the cat.", max_new_tokens=30)
        a2 = predictor.ask("Now the dog?", max_new_tokens=30)
    assert len(encodes) == 1
    assert [t.phrase for t in a1.targets] == ["cat"] and [t.phrase for t in a2.targets] == ["dog"]
    p1, p2 = prompts[0][0].tolist(), prompts[1][0].tolist()
    # The second prompt is the first prompt, the first answer with its seg group and eos, then the new question.
    assert p2[: len(p1)] == p1
    assert p2[len(p1) : len(p1) + len(first)] == first
    assert "Now the dog?" in predictor.tokenizer.decode(p2[len(p1) + len(first) :])
    assert len(predictor.session.history) == 2
    predictor.reset()
    with ForcedAnswers(predictor.model, [[second]]):
        predictor.ask("Segment the cat.", max_new_tokens=30)
    assert prompts[2][0].tolist() == p1 and len(encodes) == 1


def test_batch_equals_one_by_one(predictor: PixelLMPredictor) -> None:
    rng = np.random.default_rng(1)
    images = [rng.integers(0, 256, shape, dtype=np.uint8) for shape in [(60, 90, 3), (100, 40, 3), (33, 33, 3)]]
    questions = ["Segment the red box.", "What is this? Tell me more about it, in many words please.", "Hi"]
    scripts = [answer_ids(predictor.tokenizer, t) for t in ["The chili{S} and the curry{S}.", "A dog{S}.", "Nothing here."]]
    with ForcedAnswers(predictor.model, [scripts] + [[s] for s in scripts]):
        batched = predictor.ask_batch(list(zip(images, questions)), max_new_tokens=40)
        single = []
        for im, q in zip(images, questions):
            predictor.set_image(im)
            single.append(predictor.ask(q, max_new_tokens=40))
    assert [len(a.targets) for a in batched] == [2, 1, 0]
    for b, s in zip(batched, single):
        assert b.token_ids == s.token_ids and b.text == s.text
        for tb, ts in zip(b.targets, s.targets):
            assert tb.phrase == ts.phrase
            np.testing.assert_array_equal(tb.mask, ts.mask)
            assert tb.score == pytest.approx(ts.score, abs=1e-5)
    # Free generation (no script): the same greedy tokens with and without left padding.
    free = predictor.ask_batch(list(zip(images, questions)), max_new_tokens=25)
    for im, q, b in zip(images, questions, free):
        predictor.set_image(im)
        assert predictor.ask(q, max_new_tokens=25).token_ids == b.token_ids


SEG = " " + " ".join(seg_token_names(6))


@pytest.mark.parametrize(
    ("answer", "text", "phrases"),
    [
        ("The chili{S} and the curry{S}.", "The chili and the curry.", ["chili", "curry"]),
        ("They are{S},{S} and{S}.", "They are, and.", ["", "", ""]),
        ("Sure, it is{S}.", "Sure, it is.", [""]),
        ("a is{S}, b is{S} and c is{S}.", "a is, b is and c is.", ["a", "b", "c"]),
        ("The masks of the red car are{S}.", "The masks of the red car are.", ["red car"]),
        ("I found the green triangle{S}.", "I found the green triangle.", ["green triangle"]),
        ("Sure, the segmentation result is{S}.", "Sure, the segmentation result is.", [""]),
        ("Here are cats and dogs:{S},{S}.", "Here are cats and dogs.", ["cats and dogs", ""]),
        ("The dog in this image is{S}. The old brown cat{S}", "The dog in this image is. The old brown cat", ["dog", "old brown cat"]),
        ("{S}.", "", [""]),
        ("No targets here.", "No targets here.", []),
    ],
)
def test_phrases_from_token_sequences(predictor: PixelLMPredictor, answer: str, text: str, phrases: list[str]) -> None:
    ids = predictor.tokenizer(answer.replace("{S}", SEG), add_special_tokens=False).input_ids + [predictor.eos_token_id]
    seg = predictor.token_ids.seg
    groups = find_seg_groups(torch.tensor([ids]), torch.tensor(seg), len(seg)).of_row(0)
    parsed = parse_answer(ids, groups, predictor.tokenizer, seg, predictor.eos_token_id)
    assert parsed.text == text
    assert [g.phrase for g in parsed.groups] == phrases
    assert [g.chunk for g in parsed.groups] == list(range(len(phrases)))
    assert parsed.warnings == []


def test_tidy_spacing_maps_offsets() -> None:
    tidy, positions = tidy_spacing("  cat  ,, dog .")
    assert tidy == "cat, dog."
    assert tidy[positions[2] : positions[5]] == "cat"
    assert extract_phrase("And the big dog is") == (8, 15)


def test_answer_without_seg_tokens_is_text_only(predictor: PixelLMPredictor, image: np.ndarray) -> None:
    predictor.set_image(image)
    with ForcedAnswers(predictor.model, [[answer_ids(predictor.tokenizer, "There is nothing to segment.")]]):
        answer = predictor.ask("Is there a giraffe?", max_new_tokens=30)
    assert answer.text == "There is nothing to segment." and answer.targets == [] and answer.warnings == []


def test_malformed_seg_groups_are_dropped_with_a_warning(predictor: PixelLMPredictor, image: np.ndarray) -> None:
    predictor.set_image(image)
    swapped = " [SEG1] [SEG0] [SEG2] [SEG3] [SEG4] [SEG5]"
    scripts = [
        [answer_ids(predictor.tokenizer, "The cat" + swapped + " and the dog{S}.")],
        [answer_ids(predictor.tokenizer, "The cat [SEG0] [SEG1] [SEG2] and the dog{S}.")],
    ]
    with ForcedAnswers(predictor.model, scripts):
        out_of_order = predictor.ask("Segment the cat and the dog.", max_new_tokens=40)
        partial = predictor.ask("Again, please.", max_new_tokens=40)
    assert [t.phrase for t in out_of_order.targets] == ["dog"]
    assert len(out_of_order.warnings) == 1 and "target 0: malformed seg group [SEG1] [SEG0]" in out_of_order.warnings[0]
    assert out_of_order.text == "The cat and the dog."
    # 9 seg tokens: chunk 0 mixes two groups, 3 are left over: both reported, no mask shown.
    assert partial.targets == [] and len(partial.warnings) == 2
    assert "not a multiple of K=6" in partial.warnings[0] and "malformed" in partial.warnings[1]


def test_question_errors(predictor: PixelLMPredictor, image: np.ndarray) -> None:
    predictor.set_image(image)
    with pytest.raises(QuestionError, match="empty"):
        predictor.ask("   ")
    with pytest.raises(QuestionError, match="reserved for the image"):
        predictor.ask("Look at <image> now")
    long_question = "Please segment the " + "very " * 1200 + "small dog."
    with pytest.raises(QuestionError, match=r"prompt is \d+ tokens .* over the model's context limit of 1024 tokens") as info:
        predictor.ask(long_question, max_new_tokens=64)
    assert "Shorten the question" in str(info.value)
    assert predictor.session.history == []
    with pytest.raises(RuntimeError, match="set_image"):
        PixelLMPredictor(predictor.model, predictor.tokenizer, predictor.processor).ask("Hi")


def test_exif_rotated_photo_gives_masks_in_display_orientation(predictor: PixelLMPredictor, tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    stored = Image.fromarray(rng.integers(0, 256, (48, 80, 3), dtype=np.uint8))
    exif = Image.Exif()
    exif[0x0112] = 6  # stored landscape, displayed rotated 90 degrees clockwise (portrait)
    path = tmp_path / "rotated.jpg"
    stored.save(path, exif=exif, quality=95)
    displayed = np.asarray(ImageOps.exif_transpose(Image.open(path)).convert("RGB"))
    assert displayed.shape == (80, 48, 3)
    script = answer_ids(predictor.tokenizer, "The thing{S}.")
    with ForcedAnswers(predictor.model, [[script], [script]]):
        predictor.set_image(path)
        from_file = predictor.ask("Segment the thing.", max_new_tokens=20)
        predictor.set_image(displayed)
        from_array = predictor.ask("Segment the thing.", max_new_tokens=20)
    assert predictor.session.image.shape == (80, 48, 3)
    assert from_file.targets[0].mask.shape == (80, 48)
    np.testing.assert_array_equal(from_file.targets[0].mask, from_array.targets[0].mask)


def test_bf16_predictor_answers(tiny_dir: Path, image: np.ndarray) -> None:
    bf16 = PixelLMPredictor.from_pretrained(tiny_dir, precision="bf16")
    assert bf16.dtype == torch.bfloat16
    bf16.set_image(image)
    with ForcedAnswers(bf16.model, [[answer_ids(bf16.tokenizer, "A cat{S}.")]]):
        answer = bf16.ask("Segment the cat.", max_new_tokens=20)
    assert answer.targets[0].mask.shape == (60, 90) and answer.targets[0].phrase == "cat"


def test_load_errors_name_the_fix(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="config.json not found: expected a model folder"):
        PixelLMPredictor.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text('{"model_type": "llama", "hidden_size": 8}')
    with pytest.raises(ValueError, match="is a llava_v1 folder, not a trained PixelLM"):
        PixelLMPredictor.from_pretrained(tmp_path)
    with pytest.raises(ValueError, match="precision must be one of"):
        PixelLMPredictor.from_pretrained(build_tiny(tmp_path / "m"), precision="int3")
