"""The Gradio web demo: upload an image, ask, see the overlay, the coloured answer and download the masks.

``build_app(backend, config)`` returns the ``gr.Blocks``; ``backend`` is a ``PixelLMPredictor`` or any
object with its ``start(image)`` / ``reply(session, question, max_new_tokens)`` methods (tests inject a
slow fake one). Each browser session keeps its own conversation: the image is embedded once when a
question about a new image arrives, and later questions see the earlier turns. ``AppHandlers`` holds the
event handlers so they can be called without a browser. Set ``GRADIO_ANALYTICS_ENABLED=False`` before
importing this module to keep Gradio off the network.
"""

from __future__ import annotations

import html
import logging
import os
import tempfile
import uuid
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import gradio as gr
import numpy as np
from PIL import Image, ImageDraw

from .export import save_answer
from .image_io import ImageLoadConfig, ImageLoadError, check_image_limits, load_image
from .overlay import draw_overlay, target_color, target_color_hex
from .predictor import Answer, QuestionError

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")


class ChatBackend(Protocol):
    """What the app needs from a model: ``PixelLMPredictor`` implements it."""

    def start(self, image: Any) -> Any: ...

    def reply(self, session: Any, question: str, max_new_tokens: int = 512) -> Answer: ...


@dataclass
class AppConfig:
    """title: page title. max_new_tokens: answer length limit. concurrency: requests the model runs at
    once (others wait in the queue). max_upload_mb, max_pixels: limits on uploaded images. output_dir:
    where each answer's files go (one sub-folder per browser session); default under the system temp
    folder. examples: (image path, question) pairs shown under the inputs."""

    title: str = "PixelLM: ask about an image, get text and masks"
    max_new_tokens: int = 512
    concurrency: int = 1
    max_upload_mb: float = 10.0
    max_pixels: int = 25_000_000
    output_dir: Path = field(default_factory=lambda: Path(tempfile.gettempdir()) / "pixellm_app")
    examples: list[tuple[str, str]] = field(default_factory=list)
    alpha: str | None = None

    def __post_init__(self) -> None:
        if self.concurrency < 1:
            raise ValueError(f"AppConfig.concurrency must be >= 1, got {self.concurrency}")
        if self.max_upload_mb <= 0 or self.max_pixels <= 0:
            raise ValueError(f"AppConfig.max_upload_mb and max_pixels must be positive, got {self.max_upload_mb}, {self.max_pixels}")
        self.output_dir = Path(self.output_dir)

    @property
    def image_load_config(self) -> ImageLoadConfig:
        return ImageLoadConfig(max_pixels=self.max_pixels, max_bytes=int(self.max_upload_mb * 2**20), alpha=self.alpha)


def make_example_images(folder: str | os.PathLike) -> list[tuple[str, str]]:
    """Draw three synthetic example images into ``folder`` (kept if present); returns (path, question) pairs."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    specs = [
        ("shapes.png", (320, 240), [("ellipse", (40, 60, 140, 160), (220, 40, 40)), ("rectangle", (180, 80, 280, 180), (40, 80, 220))],
         "Please segment the red circle and the blue square."),
        ("fruit.png", (300, 300), [("ellipse", (50, 50, 150, 150), (250, 200, 30)), ("ellipse", (160, 140, 260, 240), (60, 170, 60))],
         "Where are the yellow fruit and the green fruit?"),
        ("stripes.png", (360, 200), [("rectangle", (20, 20, 100, 180), (30, 30, 30)), ("rectangle", (240, 40, 340, 160), (200, 120, 40))],
         "Segment the dark bar."),
    ]
    examples = []
    for name, size, shapes, question in specs:
        path = folder / name
        if not path.is_file():
            image = Image.new("RGB", size, (235, 235, 225))
            draw = ImageDraw.Draw(image)
            for kind, box, colour in shapes:
                getattr(draw, kind)(box, fill=colour)
            image.save(path)
        examples.append((str(path), question))
    return examples


def examples_from_dir(folder: str | os.PathLike, question: str = "What is in this image? Please segment it.") -> list[tuple[str, str]]:
    """Every image file of ``folder`` (sorted) with a generic question."""
    paths = sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not paths:
        raise ValueError(f"--examples_dir {folder} holds no image files ({', '.join(IMAGE_SUFFIXES)})")
    return [(str(p), question) for p in paths]


def _text_colour(j: int) -> str:
    r, g, b = target_color(j)
    return "#000000" if 0.299 * r + 0.587 * g + 0.114 * b > 150 else "#ffffff"


def answer_html(answer: Answer) -> str:
    """The answer as HTML: each found phrase highlighted in its target's colour, a numbered badge where
    each seg group stood, then a target list (badge, phrase, score) and the warnings."""
    marks = []
    for j, target in enumerate(answer.targets):
        r, g, b = target_color(j)
        if target.phrase_found:
            style = f"background-color: rgba({r}, {g}, {b}, 0.35); border-bottom: 3px solid {target_color_hex(j)}; padding: 0 2px"
            marks.append((target.span[0], 2, f'<span class="pixellm-phrase" data-target="{j}" style="{style}">'))
            marks.append((target.span[1], 0, "</span>"))
        marks.append((target.anchor, 1, _badge(j)))
    parts, last = [], 0
    for position, _, tag in sorted(marks):
        parts.append(html.escape(answer.text[last:position]))
        parts.append(tag)
        last = position
    parts.append(html.escape(answer.text[last:]))
    body = "".join(parts) or "<em>(no text)</em>"
    rows = [
        f'<li>{_badge(j)} <span style="color: {target_color_hex(j)}; font-weight: 600">{html.escape(t.phrase)}</span>'
        f" &middot; score {t.score:.2f}</li>"
        for j, t in enumerate(answer.targets)
    ]
    targets = f'<ul class="pixellm-targets" style="list-style: none; padding-left: 0">{"".join(rows)}</ul>' if rows else "<p><em>No target masks in this answer.</em></p>"
    warnings = "".join(f'<p class="pixellm-warning" style="color: #a15c00">&#9888; {html.escape(w)}</p>' for w in answer.warnings)
    return f'<div id="answer-html"><p class="pixellm-answer">{body}</p>{targets}{warnings}</div>'


def _badge(j: int) -> str:
    style = (
        f"background: {target_color_hex(j)}; color: {_text_colour(j)}; border-radius: 4px; padding: 0 4px; "
        "font-size: 0.8em; font-weight: 700; margin-left: 2px"
    )
    return f'<span class="pixellm-badge" data-target="{j}" style="{style}">{j}</span>'


def status_html(message: str, error: bool) -> str:
    colour = "#b42318" if error else "#1a7f37"
    icon = "&#9888;" if error else "&#10003;"
    return f'<div class="pixellm-status" style="color: {colour}">{icon} {html.escape(message)}</div>'


class AppHandlers:
    """The app's event handlers, independent of the page layout.

    State (one per browser session): ``{"image": path the session belongs to, "session": backend
    session, "turn": answers so far, "dir": this browser session's output folder}``.
    """

    def __init__(self, backend: ChatBackend, config: AppConfig) -> None:
        self.backend = backend
        self.config = config

    def new_image(self) -> tuple:
        """A new image was uploaded or cleared: reset the conversation and the outputs."""
        return [], None, "", None, "", None

    def ask(self, image_path: str | None, question: str | None, history: list[dict] | None, state: dict | None) -> tuple:
        """Answer one question. Returns (chat history, overlay, answer HTML, files, status HTML, state);
        on bad input the chat and state are kept, the outputs left as they were and the status says why."""
        history = list(history or [])
        try:
            state = self._session_for(image_path, state)
            question = (question or "").strip()
            if not question:
                raise QuestionError("The question is empty: type what to segment or ask, e.g. 'Segment the dog.'")
            answer = self.backend.reply(state["session"], question, self.config.max_new_tokens)
        except (ImageLoadError, QuestionError) as exc:
            return history, gr.skip(), gr.skip(), gr.skip(), status_html(str(exc), error=True), state
        except Exception as exc:  # the app must keep serving; the log has the traceback
            logger.exception("answering failed")
            return history, gr.skip(), gr.skip(), gr.skip(), status_html(f"Internal error ({type(exc).__name__}: {exc}).", error=True), state
        state["turn"] += 1
        image = state["rgb"]
        overlay = draw_overlay(image, [t.mask for t in answer.targets], [t.phrase for t in answer.targets])
        files = self._save(state, image, answer)
        history += [{"role": "user", "content": question}, {"role": "assistant", "content": answer.text or "(no text)"}]
        found = len(answer.targets)
        message = f"Answered with {found} target mask{'s' if found != 1 else ''}."
        return history, overlay, answer_html(answer), files, status_html(message, error=False), state

    def _session_for(self, image_path: str | None, state: dict | None) -> dict:
        """The state for ``image_path``: the current one, or a new session when the image changed."""
        if not image_path:
            raise ImageLoadError("No image: upload one (PNG, JPEG, WebP, BMP, GIF or TIFF) or pick an example.")
        if state and state.get("image") == image_path:
            return state
        limit = self.config.max_upload_mb * 2**20
        if os.path.isfile(image_path) and os.path.getsize(image_path) > limit:
            raise ImageLoadError(
                f"The file is {os.path.getsize(image_path) / 2**20:.1f} MB, over the upload limit of {self.config.max_upload_mb:g} MB."
            )
        check_image_limits(image_path, self.config.image_load_config)
        rgb = load_image(image_path, self.config.image_load_config)
        folder = Path(state["dir"]) if state and state.get("dir") else self.config.output_dir / uuid.uuid4().hex
        return {"image": image_path, "rgb": rgb, "session": self.backend.start(rgb), "turn": 0, "dir": str(folder)}

    def _save(self, state: dict, image: np.ndarray, answer: Answer) -> list[str]:
        """save_answer into the session folder, plus a zip of the files; returns [zip, json, overlay, masks...]."""
        stem = f"answer_{uuid.uuid4().hex[:8]}"
        written = save_answer(state["dir"], stem, image, answer.question, answer.text, answer.export_targets())
        archive = Path(state["dir"]) / f"{stem}.zip"
        with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
            for path in written.values():
                zf.write(path, arcname=Path(path).name)
        ordered = [written["json"], written["overlay"], *(p for k, p in written.items() if k.startswith("mask_"))]
        return [str(archive), *(str(p) for p in ordered)]


def build_app(backend: ChatBackend, config: AppConfig | None = None) -> gr.Blocks:
    """The demo page. Element ids (for tests): inp-image, question, ask-btn, chat, out-image, answer-box,
    download, status."""
    config = config or AppConfig()
    handlers = AppHandlers(backend, config)
    with gr.Blocks(title=config.title) as demo:
        gr.Markdown(f"## {config.title}\nUpload an image, ask a question; each target the answer names gets a coloured mask.")
        state = gr.State(None)
        with gr.Row():
            with gr.Column(scale=1):
                image = gr.Image(type="filepath", label="Image", elem_id="inp-image", sources=["upload", "clipboard"])
                question = gr.Textbox(label="Question", placeholder="e.g. Please segment the dog and the ball.", elem_id="question", lines=1)
                with gr.Row():
                    ask = gr.Button("Ask", variant="primary", elem_id="ask-btn")
                    clear = gr.Button("New conversation", elem_id="clear-btn")
                status = gr.HTML("", elem_id="status")
                if config.examples:
                    gr.Examples(examples=[list(e) for e in config.examples], inputs=[image, question], label="Examples")
                chat = gr.Chatbot(label="Conversation", elem_id="chat", height=300)
            with gr.Column(scale=1):
                overlay = gr.Image(label="Masks", format="png", type="numpy", interactive=False, elem_id="out-image")
                answer = gr.HTML("", elem_id="answer-box")
                files = gr.File(label="Download (zip, JSON with COCO RLE, overlay, PNG masks)", file_count="multiple", elem_id="download")
        outputs = [chat, overlay, answer, files, status, state]
        image.change(handlers.new_image, inputs=None, outputs=outputs, queue=False)
        clear.click(handlers.new_image, inputs=None, outputs=outputs, queue=False)
        for trigger in (ask.click, question.submit):
            trigger(
                handlers.ask, inputs=[image, question, chat, state], outputs=outputs, concurrency_limit=config.concurrency, concurrency_id="model"
            )
    demo.queue(default_concurrency_limit=config.concurrency)
    return demo


def launch_kwargs(config: AppConfig, host: str, port: int) -> dict[str, Any]:
    """Arguments for ``demo.launch``: the upload size limit and the folders Gradio may serve files from."""
    config.output_dir.mkdir(parents=True, exist_ok=True)
    allowed = {str(config.output_dir)} | {str(Path(path).parent) for path, _ in config.examples}
    return {
        "server_name": host,
        "server_port": port,
        "max_file_size": f"{config.max_upload_mb:g}mb",
        "allowed_paths": sorted(allowed),
        "show_error": True,
    }
