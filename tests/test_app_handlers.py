"""The web app's handlers without a browser: bad inputs give a message and the next request still works."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import pytest
from forced_answers import ForcedAnswers, answer_ids
from PIL import Image

from model.tiny import build_tiny
from serving.predictor import Answer, PixelLMPredictor, Target
from serving.web_app import AppConfig, AppHandlers, answer_html, examples_from_dir, make_example_images


@pytest.fixture(scope="module")
def predictor(tmp_path_factory: pytest.TempPathFactory) -> PixelLMPredictor:
    return PixelLMPredictor.from_pretrained(build_tiny(tmp_path_factory.mktemp("tiny"), seed=0))


class CountingBackend:
    """The real predictor, counting image embeddings."""

    def __init__(self, predictor: PixelLMPredictor) -> None:
        self.predictor = predictor
        self.starts = 0

    def start(self, image):
        self.starts += 1
        return self.predictor.start(image)

    def reply(self, session, question: str, max_new_tokens: int = 512) -> Answer:
        return self.predictor.reply(session, question, max_new_tokens)


def is_skip(value) -> bool:
    return isinstance(value, dict) and value.get("__type__") == "update" and len(value) == 1


def test_bad_inputs_give_messages_and_the_next_request_works(predictor: PixelLMPredictor, tmp_path: Path) -> None:
    backend = CountingBackend(predictor)
    handlers = AppHandlers(backend, AppConfig(max_new_tokens=40, max_pixels=1_000_000, max_upload_mb=0.05, output_dir=tmp_path / "out"))
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
        history, overlay, html, files, status, state = handlers.ask(image, question, [], state)
        assert message in status and "&#9888;" in status, (image, status)
        assert history == [] and is_skip(overlay) and is_skip(html) and is_skip(files)

    with ForcedAnswers(predictor.model, [[answer_ids(predictor.tokenizer, "The cat{S} and the dog{S}.")],
                                         [answer_ids(predictor.tokenizer, "Only text.")]]):
        history, overlay, html, files, status, state = handlers.ask(str(good), "Segment the cat and the dog.", [], state)
        assert "2 target masks" in status
        assert overlay.shape[0] > 40 and overlay.shape[2] == 3  # image plus legend rows
        assert 'data-target="0"' in html and "rgba(230, 159, 0, 0.35)" in html and ">cat</span>" in html
        assert history == [{"role": "user", "content": "Segment the cat and the dog."},
                           {"role": "assistant", "content": "The cat and the dog."}]
        names = zipfile.ZipFile(files[0]).namelist()
        assert sorted(Path(f).name for f in files[1:]) == sorted(names) and len(names) == 4
        history, overlay, html, files, status, state = handlers.ask(str(good), "Anything else?", history, state)
    assert "0 target masks" in status and "No target masks" in html and len(history) == 4
    assert backend.starts == 1  # the follow-up reused the embedding
    assert len(state["session"].history) == 2


def test_internal_errors_are_reported_and_do_not_stop_the_app(tmp_path: Path) -> None:
    class Broken:
        def start(self, image):
            return object()

        def reply(self, session, question, max_new_tokens=512):
            raise RuntimeError("CUDA out of memory")

    good = tmp_path / "good.png"
    Image.new("RGB", (20, 20)).save(good)
    handlers = AppHandlers(Broken(), AppConfig(output_dir=tmp_path))
    history, *_, status, state = handlers.ask(str(good), "Hi", [], None)
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
