"""One server for the web page and the HTTP API, with one ``BatchScheduler`` owning the model.

``build_server`` makes a FastAPI app: the API routes (``serving.http_api``), OpenAPI docs at /docs, and the
Gradio page (``serving.web_app``) mounted at /. ``run_server`` is what ``app.py`` does: load the model, build
the app, serve it with uvicorn until interrupted. ``BackgroundServer`` serves an app from a thread (tests).
"""

from __future__ import annotations

import dataclasses
import os
import sys
import threading
import time
from pathlib import Path
from typing import TextIO

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import gradio as gr  # noqa: E402
import uvicorn  # noqa: E402
from fastapi import FastAPI  # noqa: E402

from .examples import choose_examples  # noqa: E402
from .http_api import ApiConfig, build_api_router  # noqa: E402
from .options import ServeOptions  # noqa: E402
from .predictor import PixelLMPredictor  # noqa: E402
from .scheduler import BatchScheduler  # noqa: E402
from .web_app import AppConfig, build_app, mount_kwargs  # noqa: E402


def build_server(scheduler: BatchScheduler, app_config: AppConfig, api_config: ApiConfig) -> FastAPI:
    """The API under /api/v1, its docs at /docs, the web page at /; both answer through ``scheduler``."""
    app = FastAPI(
        title="PixelLM",
        summary="Ask about an image; get the answer text and one COCO RLE mask per target.",
        description="Questions from all clients and from the web page at / are answered together in batches. See docs/serving.md.",
    )
    app.include_router(build_api_router(scheduler, api_config))
    return gr.mount_gradio_app(app, build_app(scheduler, app_config), path="/", **mount_kwargs(app_config))


class BackgroundServer:
    """Serve ``app`` with uvicorn from a thread: ``with BackgroundServer(app) as url: ...`` (port 0: a free one)."""

    def __init__(self, app: FastAPI, host: str = "127.0.0.1", port: int = 0) -> None:
        # Open page connections (Gradio's event streams) get a short grace period at shutdown.
        self.server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning", timeout_graceful_shutdown=5))
        self.thread = threading.Thread(target=self.server.run, name="pixellm-http", daemon=True)
        self.host = host

    def __enter__(self) -> str:
        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the server did not start (see the log above)")
            time.sleep(0.05)
        port = self.server.servers[0].sockets[0].getsockname()[1]
        return f"http://{self.host}:{port}"

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(30)


def run_server(options: ServeOptions, out: TextIO | None = None) -> None:
    """Check ``options`` (``OptionsError``), load the model, serve the page and the API until interrupted."""
    options.check()
    out = out or sys.stdout
    predictor = PixelLMPredictor.from_pretrained(
        options.version,
        device=options.device,
        precision=options.precision,
        image_load_config=options.limits.image_load_config,
    )
    limits = dataclasses.replace(options.limits, alpha=predictor.image_load_config.alpha)
    output_dir = Path(options.output_dir)
    app_config = AppConfig(
        limits=limits,
        concurrency=options.concurrency,
        output_dir=output_dir,
        examples=choose_examples(options.version, options.examples_dir, output_dir / "examples"),
    )
    api_config = ApiConfig(
        limits=limits,
        max_conversations=options.max_conversations,
        max_images=options.max_images,
        idle_minutes=options.idle_minutes,
        model_name=Path(options.version).resolve().name,
    )
    scheduler = BatchScheduler(predictor, options.scheduler_config)
    try:
        app = build_server(scheduler, app_config, api_config)
        base = f"http://{options.host}:{options.port}"
        print(f"PixelLM on {options.device} ({options.precision}), batches of up to {options.max_batch_size} questions", file=out)
        print(f"  web page: {base}/\n  API:      {base}/api/v1/answer (docs: {base}/docs)", file=out, flush=True)
        uvicorn.run(app, host=options.host, port=options.port, log_level="warning")
    finally:
        scheduler.close()
