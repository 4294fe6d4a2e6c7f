"""The web page in headless Chromium (Debian's /usr/bin/chromium driven by Playwright; no browser download),
served as app.py serves it: the Gradio page mounted next to the HTTP API, one BatchScheduler answering.

Skipped when chromium is absent, except under CI (env CI set), where that is a failure: CI must install it
(.ci/run does). The screenshot of the answered page is written to a temporary folder; its path is printed.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from forced_answers import ForcedAnswers, answer_ids
from model.tiny import build_tiny
from serving.examples import choose_examples, write_model_examples
from serving.image_io import ImageLoadConfig, load_image
from serving.predictor import Answer, ImageEmbedding, PixelLMPredictor, Target
from serving.request_limits import RequestLimits
from serving.scheduler import BatchScheduler

CHROMIUM = "/usr/bin/chromium"

if not os.path.exists(CHROMIUM):
    if os.environ.get("CI"):
        pytest.fail(f"{CHROMIUM} is missing under CI: install it (apt-get install -y chromium; .ci/run does)", pytrace=False)
    pytest.skip(f"{CHROMIUM} is not installed (apt-get install -y chromium)", allow_module_level=True)

from playwright.sync_api import Browser, Page, expect, sync_playwright  # noqa: E402

from serving.http_api import ApiConfig  # noqa: E402
from serving.server import BackgroundServer, build_server  # noqa: E402
from serving.web_app import AppConfig  # noqa: E402

QUESTION = "Segment the yellow square and the blue background."


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--disable-gpu", "--disable-quic"])
        yield browser
        browser.close()


@contextmanager
def serving(predictor, config: AppConfig) -> Iterator[str]:
    """The page and the API on a free loopback port, answering through one BatchScheduler; yields the page URL."""
    scheduler = BatchScheduler(predictor)
    try:
        with BackgroundServer(build_server(scheduler, config, ApiConfig(limits=config.limits))) as url:
            yield url + "/"
    finally:
        scheduler.close()


@pytest.fixture(scope="module")
def sample_png(tmp_path_factory: pytest.TempPathFactory) -> Path:
    image = Image.new("RGB", (64, 48), (30, 60, 200))
    image.paste((240, 220, 30), (16, 12, 40, 36))
    path = tmp_path_factory.mktemp("img") / "sample.png"
    image.save(path)
    return path


@pytest.fixture(scope="module")
def real_app(tmp_path_factory: pytest.TempPathFactory, sample_png: Path) -> Iterator[str]:
    """The tiny model, forced to answer 'The yellow square{S} and the blue background{S}.'; its folder holds
    one example (the sample image and QUESTION), which the page shows instead of the built-in drawings."""
    folder = build_tiny(tmp_path_factory.mktemp("tiny"), seed=0)
    write_model_examples(folder, [(sample_png, QUESTION)])
    predictor = PixelLMPredictor.from_pretrained(folder)
    script = answer_ids(predictor.tokenizer, "The yellow square{S} and the blue background{S}.")
    output = tmp_path_factory.mktemp("app_out")
    config = AppConfig(limits=RequestLimits(max_new_tokens=60), output_dir=output, examples=choose_examples(folder, None, output / "drawings"))
    with ForcedAnswers(predictor.model, [[script]]), serving(predictor, config) as url:
        yield url


def open_page(browser: Browser, url: str) -> Page:
    page = browser.new_page(viewport={"width": 1280, "height": 1000})
    page.goto(url)
    page.locator("#ask-btn").wait_for(state="visible", timeout=30_000)
    return page


def upload(page: Page, image: Path, question: str) -> None:
    page.locator("#inp-image input[type=file]").set_input_files(str(image))
    expect(page.locator("#inp-image img")).to_have_attribute("src", re.compile("/gradio_api/file="), timeout=30_000)
    page.locator("#question textarea").fill(question)


def expect_two_masks(page: Page) -> None:
    out_img = page.locator("#out-image img")
    expect(out_img).to_have_attribute("src", re.compile(r"/gradio_api/file=.*\.png"), timeout=60_000)
    phrases = page.locator("#answer-box .pixellm-phrase")
    expect(phrases).to_have_count(2, timeout=30_000)
    expect(phrases.nth(0)).to_have_text("yellow square")
    expect(phrases.nth(1)).to_have_text("blue background")
    expect(phrases.nth(0)).to_have_css("border-bottom-color", "rgb(230, 159, 0)")
    expect(page.locator("#status")).to_contain_text("2 target masks")
    overlay = page.request.get(out_img.get_attribute("src"))
    assert overlay.ok and overlay.body()[:8] == b"\x89PNG\r\n\x1a\n"


def test_upload_ask_shows_overlay_and_coloured_answer(browser: Browser, real_app: str, sample_png: Path) -> None:
    page = open_page(browser, real_app)
    upload(page, sample_png, QUESTION)
    page.locator("#ask-btn").click()
    expect_two_masks(page)
    expect(page.locator("#chat")).to_contain_text("The yellow square and the blue background.")
    expect(page.locator("#download")).to_contain_text(".zip")

    # A bad request shows a message; the next good one is answered.
    page.locator("#question textarea").fill("   ")
    page.locator("#ask-btn").click()
    expect(page.locator("#status")).to_contain_text("question is empty", timeout=30_000)
    page.locator("#question textarea").fill("And now?")
    page.locator("#ask-btn").click()
    expect(page.locator("#chat")).to_contain_text("And now?", timeout=60_000)
    expect(page.locator("#status")).to_contain_text("2 target masks", timeout=60_000)

    shot = Path(tempfile.mkdtemp(prefix="pixellm_app_")) / "app_screenshot.png"
    page.screenshot(path=str(shot), full_page=True)
    print(f"\nscreenshot: {shot}")
    keep = os.environ.get("PIXELLM_SCREENSHOT")
    if keep:
        shutil.copy(shot, keep)
    assert shot.stat().st_size > 10_000
    page.close()


def test_the_model_folders_example_is_shown_and_answers(browser: Browser, real_app: str) -> None:
    page = open_page(browser, real_app)
    example = page.get_by_text(QUESTION, exact=True)
    expect(example).to_be_visible()
    expect(page.get_by_text("Please segment the red circle and the blue square.")).to_have_count(0)
    example.click()
    expect(page.locator("#question textarea")).to_have_value(QUESTION, timeout=30_000)
    expect(page.locator("#inp-image img")).to_have_attribute("src", re.compile("/gradio_api/file=.*example_0"), timeout=30_000)
    page.locator("#ask-btn").click()
    expect_two_masks(page)
    page.close()


class SlowFakePredictor:
    """Stands in for PixelLMPredictor behind a real BatchScheduler: answers "Answer to <question>" one word
    every ``step`` seconds through the text callbacks, and records the size of every batch."""

    image_load_config = ImageLoadConfig()

    def __init__(self, step: float) -> None:
        self.step = step
        self.batches: list[int] = []
        self.lock = threading.Lock()

    def load(self, image) -> ImageEmbedding:
        return ImageEmbedding(load_image(image))

    def prompt_ids(self, history, question: str, max_new_tokens: int) -> list[int]:
        return []

    def reply_batch(self, sessions, questions, max_new_tokens, on_text) -> list[Answer]:
        with self.lock:
            self.batches.append(len(sessions))
        words = [f"Answer to {q}".split(" ") for q in questions]
        for i in range(max(len(w) for w in words)):
            time.sleep(self.step)
            for row, callback in zip(words, on_text):
                if i < len(row):
                    callback(row[i] if i == 0 else " " + row[i])
        answers = []
        for session, question, row in zip(sessions, questions, words):
            h, w = session.size
            mask = np.zeros((h, w), dtype=bool)
            mask[: h // 2] = True
            answers.append(Answer(question, " ".join(row), [Target("Answer", mask, (0, 0, w, h // 2), 0.9, (0, 6), 6)]))
        return answers


def test_text_streams_in_and_concurrent_questions_share_a_batch(browser: Browser, sample_png: Path, tmp_path: Path) -> None:
    fake = SlowFakePredictor(step=1.0)
    with serving(fake, AppConfig(output_dir=tmp_path)) as url:
        pages = [open_page(browser, url) for _ in range(3)]
        for i, page in enumerate(pages):
            upload(page, sample_png, f"question {i}")
        for page in pages:
            page.locator("#ask-btn").click()
        for i, page in enumerate(pages):
            # Part of the answer is on the page while the status still says it is being answered.
            expect(page.locator("#chat")).to_contain_text("Answer to", timeout=30_000)
            if i == 0:
                assert "Answering" in page.locator("#status").inner_text()
                assert "Answer to question 0" not in page.locator("#chat").inner_text()
        for i, page in enumerate(pages):
            expect(page.locator("#chat")).to_contain_text(f"Answer to question {i}", timeout=30_000)
            expect(page.locator("#status")).to_contain_text("1 target mask", timeout=30_000)
        for page in pages:
            page.close()
    assert sum(fake.batches) == 3 and max(fake.batches) >= 2, fake.batches
