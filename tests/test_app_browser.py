"""The Gradio app in headless Chromium (Debian's /usr/bin/chromium driven by Playwright; no browser download).

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
from pathlib import Path

import numpy as np
import pytest
from training.distributed import free_port
from forced_answers import ForcedAnswers, answer_ids
from PIL import Image

from model.tiny import build_tiny
from serving.predictor import Answer, PixelLMPredictor, Target

CHROMIUM = "/usr/bin/chromium"

if not os.path.exists(CHROMIUM):
    if os.environ.get("CI"):
        pytest.fail(f"{CHROMIUM} is missing under CI: install it (apt-get install -y chromium; .ci/run does)", pytrace=False)
    pytest.skip(f"{CHROMIUM} is not installed (apt-get install -y chromium)", allow_module_level=True)

from playwright.sync_api import Browser, Page, expect, sync_playwright  # noqa: E402

from serving.web_app import AppConfig, build_app  # noqa: E402


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--disable-gpu", "--disable-quic"])
        yield browser
        browser.close()


def serve(backend, config: AppConfig) -> tuple[object, str]:
    demo = build_app(backend, config)
    port = free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True,
                allowed_paths=[str(config.output_dir)], max_file_size=f"{config.max_upload_mb:g}mb", show_error=True)
    return demo, f"http://127.0.0.1:{port}/"


@pytest.fixture(scope="module")
def sample_png(tmp_path_factory: pytest.TempPathFactory) -> Path:
    image = Image.new("RGB", (64, 48), (30, 60, 200))
    image.paste((240, 220, 30), (16, 12, 40, 36))
    path = tmp_path_factory.mktemp("img") / "sample.png"
    image.save(path)
    return path


@pytest.fixture(scope="module")
def real_app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The app on the tiny model, forced to answer 'The yellow square{S} and the blue background{S}.'."""
    predictor = PixelLMPredictor.from_pretrained(build_tiny(tmp_path_factory.mktemp("tiny"), seed=0))
    script = answer_ids(predictor.tokenizer, "The yellow square{S} and the blue background{S}.")
    config = AppConfig(max_new_tokens=60, output_dir=tmp_path_factory.mktemp("app_out"))
    with ForcedAnswers(predictor.model, [[script]]):
        demo, url = serve(predictor, config)
        yield url
        demo.close()


def open_page(browser: Browser, url: str) -> Page:
    page = browser.new_page(viewport={"width": 1280, "height": 1000})
    page.goto(url)
    page.locator("#ask-btn").wait_for(state="visible", timeout=30_000)
    return page


def ask(page: Page, image: Path, question: str) -> None:
    page.locator("#inp-image input[type=file]").set_input_files(str(image))
    expect(page.locator("#inp-image img")).to_have_attribute("src", re.compile("/gradio_api/file="), timeout=30_000)
    page.locator("#question textarea").fill(question)
    page.locator("#ask-btn").click()


def test_upload_ask_shows_overlay_and_coloured_answer(browser: Browser, real_app: str, sample_png: Path) -> None:
    page = open_page(browser, real_app)
    ask(page, sample_png, "Segment the yellow square and the blue background.")
    out_img = page.locator("#out-image img")
    expect(out_img).to_have_attribute("src", re.compile(r"/gradio_api/file=.*\.png"), timeout=60_000)
    phrases = page.locator("#answer-box .pixellm-phrase")
    expect(phrases).to_have_count(2, timeout=30_000)
    expect(phrases.nth(0)).to_have_text("yellow square")
    expect(phrases.nth(1)).to_have_text("blue background")
    expect(phrases.nth(0)).to_have_css("border-bottom-color", "rgb(230, 159, 0)")
    expect(page.locator("#chat")).to_contain_text("The yellow square and the blue background.")
    expect(page.locator("#status")).to_contain_text("2 target masks")
    expect(page.locator("#download")).to_contain_text(".zip")
    overlay = page.request.get(out_img.get_attribute("src"))
    assert overlay.ok and overlay.body()[:8] == b"\x89PNG\r\n\x1a\n"

    # A bad request shows a message; the next good one is answered.
    page.locator("#question textarea").fill("   ")
    page.locator("#ask-btn").click()
    expect(page.locator("#status")).to_contain_text("question is empty", timeout=30_000)
    page.locator("#question textarea").fill("And now?")
    page.locator("#ask-btn").click()
    expect(page.locator("#chat")).to_contain_text("And now?", timeout=60_000)
    expect(page.locator("#status")).to_contain_text("2 target masks")

    shot = Path(tempfile.mkdtemp(prefix="pixellm_app_")) / "app_screenshot.png"
    page.screenshot(path=str(shot), full_page=True)
    print(f"\nscreenshot: {shot}")
    keep = os.environ.get("PIXELLM_SCREENSHOT")
    if keep:
        shutil.copy(shot, keep)
    assert shot.stat().st_size > 10_000
    page.close()


class SlowFake:
    """A fake model that takes ``seconds`` per answer and records when each answer ran."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.intervals: list[tuple[float, float]] = []
        self.lock = threading.Lock()

    def start(self, image):
        return {"image": image}

    def reply(self, session, question: str, max_new_tokens: int = 512) -> Answer:
        begin = time.monotonic()
        time.sleep(self.seconds)
        with self.lock:
            self.intervals.append((begin, time.monotonic()))
        h, w = session["image"].shape[:2]
        mask = np.zeros((h, w), dtype=bool)
        mask[: h // 2] = True
        text = f"Answer to {question}"
        return Answer(question, text, [Target("Answer", mask, (0, 0, w, h // 2), 0.9, (0, 6), 6)])


def test_requests_queue_behind_the_concurrency_limit(browser: Browser, sample_png: Path, tmp_path: Path) -> None:
    fake = SlowFake(seconds=1.5)
    demo, url = serve(fake, AppConfig(concurrency=1, output_dir=tmp_path))
    try:
        pages = [open_page(browser, url) for _ in range(2)]
        for i, page in enumerate(pages):
            page.locator("#inp-image input[type=file]").set_input_files(str(sample_png))
            expect(page.locator("#inp-image img")).to_have_attribute("src", re.compile("/gradio_api/file="), timeout=30_000)
            page.locator("#question textarea").fill(f"question {i}")
        for page in pages:
            page.locator("#ask-btn").click()
        for i, page in enumerate(pages):
            expect(page.locator("#chat")).to_contain_text(f"Answer to question {i}", timeout=30_000)
        (a0, a1), (b0, b1) = sorted(fake.intervals)
        assert b0 >= a1, f"the second answer started before the first ended: {fake.intervals}"
    finally:
        demo.close()
