"""The Gradio web page: upload an image, ask, watch the answer being written, see the overlay, the
coloured answer and download the masks.

``build_app(backend, config)`` returns the ``gr.Blocks``; ``backend`` is a ``serving.scheduler.BatchScheduler``
(questions of all browser sessions and of the HTTP API are answered together in batches) or any object
with its ``start(image)`` / ``submit(session, question, max_new_tokens) -> AnswerStream`` methods (tests
inject slow fakes). Each browser session keeps its own conversation: the image is embedded once, with the
first question about it, and later questions see the earlier turns. ``AppHandlers`` holds the event
handlers so they can be called without a browser. ``serving.server`` mounts the page next to the HTTP API.
Set ``GRADIO_ANALYTICS_ENABLED=False`` before importing this module to keep Gradio off the network.
"""

from __future__ import annotations

import html
import logging
import os
import tempfile
import uuid
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import gradio as gr
import numpy as np

from .export import save_answer
from .image_io import ImageLoadError, check_image_limits, load_image
from .overlay import draw_overlay, target_color, target_color_hex
from .predictor import Answer, QuestionError
from .request_limits import RequestLimits
from .scheduler import AnswerStream, QueueFullError

logger = logging.getLogger(__name__)


class ChatBackend(Protocol):
    """What the page needs from a model: ``serving.scheduler.BatchScheduler`` implements it."""

    def start(self, image: Any) -> Any: ...

    def submit(self, session: Any, question: str, max_new_tokens: int = 512) -> AnswerStream: ...


@dataclass
class AppConfig:
    """title: page title. limits: answer length, upload size, pixel and question limits. concurrency:
    questions of the page handed to the backend at once (the scheduler batches them; more wait in
    Gradio's queue). output_dir: where each answer's files go (one sub-folder per browser session);
    default under the system temp folder. examples: (image path, question) pairs shown under the inputs."""

    title: str = "PixelLM: ask about an image, get text and masks"
    limits: RequestLimits = field(default_factory=RequestLimits)
    concurrency: int = 16
    output_dir: Path = field(default_factory=lambda: Path(tempfile.gettempdir()) / "pixellm_app")
    examples: list[tuple[str, str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.concurrency < 1:
            raise ValueError(f"AppConfig.concurrency must be >= 1, got {self.concurrency}")
        self.output_dir = Path(self.output_dir)


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


_STATUS_STYLES = {"ok": ("#1a7f37", "&#10003;"), "error": ("#b42318", "&#9888;"), "busy": ("#475467", "&#8987;")}


def status_html(message: str, kind: str = "ok") -> str:
    """The status line; kind is "ok", "error" or "busy"."""
    colour, icon = _STATUS_STYLES[kind]
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

    def ask(self, image_path: str | None, question: str | None, history: list[dict] | None, state: dict | None) -> Iterator[tuple]:
        """Answer one question, yielding (chat history, overlay, answer HTML, files, status HTML, state):
        the chat with the answer text as far as it is generated, then the complete answer with its masks.
        On bad input the chat and state are kept, the outputs left as they were and the status says why."""
        history = list(history or [])
        skip = (gr.skip(), gr.skip(), gr.skip())
        try:
            state = self._session_for(image_path, state)
            question = self.config.limits.question(question)
            stream = self.backend.submit(state["session"], question, self.config.limits.max_new_tokens)
        except (ImageLoadError, QuestionError, QueueFullError) as exc:
            yield history, *skip, status_html(str(exc), "error"), state
            return
        except Exception as exc:  # the app must keep serving; the log has the traceback
            logger.exception("answering failed")
            yield history, *skip, status_html(f"Internal error ({type(exc).__name__}: {exc}).", "error"), state
            return
        asked = [*history, {"role": "user", "content": question}]
        yield asked, *skip, status_html("Answering...", "busy"), state
        text = ""
        for chunk in stream:
            text += chunk
            yield [*asked, {"role": "assistant", "content": text}], *skip, gr.skip(), state
        try:
            answer = stream.result()
        except QuestionError as exc:
            yield history, *skip, status_html(str(exc), "error"), state
            return
        except Exception as exc:  # already logged by the scheduler
            yield history, *skip, status_html(f"Internal error ({type(exc).__name__}: {exc}).", "error"), state
            return
        state["turn"] += 1
        image = state["rgb"]
        overlay = draw_overlay(image, [t.mask for t in answer.targets], [t.phrase for t in answer.targets])
        files = self._save(state, image, answer)
        found = len(answer.targets)
        message = f"Answered with {found} target mask{'s' if found != 1 else ''}."
        chat = [*asked, {"role": "assistant", "content": answer.text or "(no text)"}]
        yield chat, overlay, answer_html(answer), files, status_html(message), state

    def _session_for(self, image_path: str | None, state: dict | None) -> dict:
        """The state for ``image_path``: the current one, or a new session when the image changed."""
        if not image_path:
            raise ImageLoadError("No image: upload one (PNG, JPEG, WebP, BMP, GIF or TIFF) or pick an example.")
        if state and state.get("image") == image_path:
            return state
        limits = self.config.limits
        if os.path.isfile(image_path) and os.path.getsize(image_path) > limits.max_upload_bytes:
            raise ImageLoadError(
                f"The file is {os.path.getsize(image_path) / 2**20:.1f} MB, over the upload limit of {limits.max_upload_mb:g} MB."
            )
        check_image_limits(image_path, limits.image_load_config)
        rgb = load_image(image_path, limits.image_load_config)
        folder = Path(state["dir"]) if state and state.get("dir") else self.config.output_dir / uuid.uuid4().hex
        return {"image": image_path, "rgb": rgb, "session": self.backend.start(rgb), "turn": 0, "dir": str(folder)}

    def _save(self, state: dict, image: np.ndarray, answer: Answer) -> list[str]:
        """save_answer into the session folder, plus a zip of the files; returns [zip, json, overlay, masks...]."""
        stem = f"answer_{uuid.uuid4().hex[:8]}"
        written = save_answer(state["dir"], stem, image, answer.question, answer.text, answer.export_targets(), warnings=answer.warnings)
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


def mount_kwargs(config: AppConfig) -> dict[str, Any]:
    """Arguments for ``gr.mount_gradio_app``: the upload size limit and the folders Gradio may serve files from."""
    config.output_dir.mkdir(parents=True, exist_ok=True)
    allowed = {str(config.output_dir.resolve())} | {str(Path(path).resolve().parent) for path, _ in config.examples}
    return {"max_file_size": config.limits.max_upload_bytes, "allowed_paths": sorted(allowed), "show_error": True}
