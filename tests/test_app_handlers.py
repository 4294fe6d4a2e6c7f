"""The web app's handlers without a browser: answers stream into the chat, bad inputs give a message and the
next request still works; the page's examples come from the model folder when it has them."""

from __future__ import annotations

import itertools
import json
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from forced_answers import ForcedAnswers, answer_ids
from model.tiny import build_tiny
from serving.examples import choose_examples, examples_from_dir, make_example_images, model_examples, write_model_examples
from serving.predictor import Answer, PixelLMPredictor, Target
from serving.request_limits import RequestLimits
from serving.scheduler import AnswerStream, BatchScheduler
from serving.web_app import AppConfig, AppHandlers, answer_html


@pytest.fixture(scope="module")
def scheduler(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BatchScheduler]:
    scheduler = BatchScheduler(PixelLMPredictor.from_pretrained(build_tiny(tmp_path_factory.mktemp("tiny"), seed=0)))
    yield scheduler
    scheduler.close()


class CountingBackend:
    """The real scheduler, counting new conversations and image embeddings."""

    def __init__(self, scheduler: BatchScheduler) -> None:
        self.scheduler = scheduler
        self.starts = 0
        self.encodes = 0
        model = scheduler.predictor.model
        encode = model.encode_images
        model.encode_images = lambda *a, **k: setattr(self, "encodes", self.encodes + 1) or encode(*a, **k)

    def start(self, image):
        self.starts += 1
        return self.scheduler.start(image)

    def submit(self, session, question: str, max_new_tokens: int = 512) -> AnswerStream:
        return self.scheduler.submit(session, question, max_new_tokens)


def is_skip(value) -> bool:
    return isinstance(value, dict) and value.get("__type__") == "update" and len(value) == 1


def last(updates: Iterator[tuple]) -> tuple:
    *_, final = updates
    return final


def test_bad_inputs_give_messages_and_the_next_request_works(scheduler: BatchScheduler, tmp_path: Path) -> None:
    predictor = scheduler.predictor
    backend = CountingBackend(scheduler)
    limits = RequestLimits(max_new_tokens=40, max_pixels=1_000_000, max_upload_mb=0.05, max_question_chars=10_000)
    handlers = AppHandlers(backend, AppConfig(limits=limits, output_dir=tmp_path / "out"))
    not_image = tmp_path / "notes.png"
    not_image.write_text("this is not an image")
    bomb = tmp_path / "bomb.png"
    Image.new("L", (2000, 1000)).save(bomb)  # 2 MP, compresses to a few KB
    heavy = tmp_path / "noise.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (200, 200, 3), dtype=np.uint8)).save(heavy)  # ~120 KB
    good = tmp_path / "good.png"
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (40, 50, 3), dtype=np.uint8)).save(good)

    cases = [
        (None, "Segment it.", "No image"),
        (str(not_image), "Segment it.", "not a readable image"),
        (str(bomb), "Segment it.", "megapixels"),
        (str(heavy), "Segment it.", "over the upload limit"),
        (str(good), "   ", "question is empty"),
        (str(good), "Segment the " + "very " * 1100 + "big dog.", "too long"),
    ]
    state = None
    for image, question, message in cases:
        history, overlay, html, files, status, state = last(handlers.ask(image, question, [], state))
        assert message in status and "&#9888;" in status, (image, status)
        assert history == [] and is_skip(overlay) and is_skip(html) and is_skip(files)

    with ForcedAnswers(predictor.model, [[answer_ids(predictor.tokenizer, "The cat{S} and the dog{S}, both sitting.")],
                                         [answer_ids(predictor.tokenizer, "Only text.")]]):
        updates = list(handlers.ask(str(good), "Segment the cat and the dog.", [], state))
        history, overlay, html, files, status, state = updates[-1]
        assert "2 target masks" in status
        # The chat showed the question at once, then the answer text growing, before the masks came.
        assert "Answering" in updates[0][4] and updates[0][0] == [{"role": "user", "content": "Segment the cat and the dog."}]
        partial = [u[0][-1]["content"] for u in updates[1:-1]]
        assert len(partial) >= 2 and all(is_skip(u[1]) for u in updates[:-1])
        assert all(b.startswith(a) for a, b in itertools.pairwise(partial)) and partial[-1] == "The cat and the dog, both sitting."
        assert overlay.shape[0] > 40 and overlay.shape[2] == 3  # image plus legend rows
        assert 'data-target="0"' in html and "rgba(230, 159, 0, 0.35)" in html and ">cat</span>" in html
        assert history == [{"role": "user", "content": "Segment the cat and the dog."},
                           {"role": "assistant", "content": "The cat and the dog, both sitting."}]
        names = zipfile.ZipFile(files[0]).namelist()
        assert sorted(Path(f).name for f in files[1:]) == sorted(names) and len(names) == 4
        history, overlay, html, files, status, state = last(handlers.ask(str(good), "Anything else?", history, state))
    assert "0 target masks" in status and "No target masks" in html and len(history) == 4
    assert backend.starts == 1 and backend.encodes == 1  # the follow-up reused the embedding
    assert len(state["session"].history) == 2


def test_internal_errors_are_reported_and_do_not_stop_the_app(tmp_path: Path) -> None:
    class Broken:
        def __init__(self, where: str) -> None:
            self.where = where

        def start(self, image):
            return object()

        def submit(self, session, question, max_new_tokens=512):
            if self.where == "submit":
                raise RuntimeError("CUDA out of memory")
            stream = AnswerStream()
            stream.push_text("Half an")
            stream.fail(RuntimeError("CUDA out of memory"))
            return stream

    good = tmp_path / "good.png"
    Image.new("RGB", (20, 20)).save(good)
    for where in ("submit", "generation"):
        handlers = AppHandlers(Broken(where), AppConfig(output_dir=tmp_path))
        history, *_, status, state = last(handlers.ask(str(good), "Hi", [], None))
        assert "Internal error (RuntimeError: CUDA out of memory)" in status and history == []


def test_answer_html_escapes_and_colours() -> None:
    mask = np.zeros((4, 4), dtype=bool)
    answer = Answer(
        question="q",
        text="The <b>cat</b> and, .",
        targets=[
            Target("<b>cat</b>", mask, (0, 0, 0, 0), 0.0, span=(4, 14), anchor=14),
            Target("target 1", mask, (0, 0, 0, 0), 0.0, span=(18, 18), anchor=18, phrase_found=False),
        ],
        warnings=["target 2: malformed <seg>"],
    )
    out = answer_html(answer)
    assert "<b>" not in out and "&lt;b&gt;cat&lt;/b&gt;</span>" in out
    assert out.count('class="pixellm-phrase"') == 1 and out.count('class="pixellm-badge"') == 4
    assert "malformed &lt;seg&gt;" in out


def test_examples(tmp_path: Path) -> None:
    examples = make_example_images(tmp_path / "ex")
    assert len(examples) == 3 and all(Path(p).is_file() and q for p, q in examples)
    assert [p for p, _ in examples_from_dir(tmp_path / "ex")] == sorted(p for p, _ in examples)
    with pytest.raises(ValueError, match="holds no image files"):
        examples_from_dir(tmp_path)


def test_model_folder_examples_replace_the_drawings(tmp_path: Path) -> None:
    model = tmp_path / "model"
    model.mkdir()
    drawings = tmp_path / "drawings"
    assert model_examples(model) is None
    assert [q for _, q in choose_examples(model, None, drawings)][0] == "Please segment the red circle and the blue square."
    red = np.zeros((24, 32, 3), dtype=np.uint8)
    red[4:12, 4:12] = (220, 30, 30)
    written = write_model_examples(model, [(red, "Please segment the red square."), (Image.new("RGB", (16, 16), "blue"), " The blue one? ")])
    assert written == model / "examples" / "examples.json"
    assert json.loads(written.read_text()) == [
        {"image": "example_0.png", "question": "Please segment the red square."},
        {"image": "example_1.png", "question": "The blue one?"},
    ]
    chosen = choose_examples(model, None, drawings)
    assert chosen == model_examples(model) and [q for _, q in chosen] == ["Please segment the red square.", "The blue one?"]
    np.testing.assert_array_equal(np.asarray(Image.open(chosen[0][0])), red)  # lossless
    assert choose_examples(model, tmp_path / "drawings", drawings) == examples_from_dir(drawings)  # the explicit folder wins
    write_model_examples(model, [(red, "Only one now.")])
    assert not (model / "examples" / "example_1.png").exists() and len(model_examples(model)) == 1

    (model / "examples" / "examples.json").write_text(json.dumps([{"image": "../secret.png", "question": "Hi"}]))
    with pytest.raises(ValueError, match="not a file in"):
        model_examples(model)
    (model / "examples" / "examples.json").write_text(json.dumps([{"image": "example_0.png"}]))
    with pytest.raises(ValueError, match="entry 0 needs"):
        model_examples(model)
    with pytest.raises(ValueError, match="non-empty string"):
        write_model_examples(model, [(red, "  ")])
