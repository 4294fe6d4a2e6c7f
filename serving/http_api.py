"""The HTTP API: ask about an image from any program; answers carry COCO RLE masks; optionally streamed.

Routes (``build_api_router``; docs/serving.md has examples, /docs the OpenAPI page):

- ``POST /api/v1/answer``: one question, one JSON answer (``AnswerOut``: the record ``chat.py`` writes, plus
  ``conversation_id``, ``image_id``, ``warnings`` and ``timings``);
- ``POST /api/v1/answer/stream``: the same question, answered as newline-delimited JSON events:
  ``{"type": "text", "text": ...}`` as the answer is generated (the texts add up to the answer), then
  one ``{"type": "answer", ...AnswerOut}`` or ``{"type": "error", "status": ..., "detail": ...}``;
- ``GET /api/v1/health``; ``DELETE /api/v1/conversations/{conversation_id}``.

A question comes as ``multipart/form-data`` (an ``image`` file) or ``application/json`` (``image_base64``),
with ``question`` and optionally ``max_new_tokens``. Instead of an image: ``image_id`` (a new
conversation about an image sent before) or ``conversation_id`` (a follow-up that sees the earlier turns).
Both ids are kept in ``ExpiringStore``s bounded by count and idle time; an unknown or expired id is a 404.
Every error is JSON ``{"detail": message}`` with its status code (``ERROR_STATUS``); the worker and the
server go on answering.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import json
import logging
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, ValidationError
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser

from .export import answer_record
from .image_io import ImageLoadError, ImageTooLargeError, load_image
from .predictor import Answer, ChatSession, ImageEmbedding, QuestionError
from .request_limits import RequestLimits
from .scheduler import AnswerStream, BatchScheduler, QueueFullError, SchedulerClosedError
from .session_store import ExpiringStore

logger = logging.getLogger(__name__)

API_PREFIX = "/api/v1"
# Form fields and JSON overhead allowed on top of the image (base64 adds a third).
_BODY_SLACK = 64 * 1024


class ApiError(Exception):
    """A request the API refuses: ``status`` and a message for a person."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


# Exceptions of the model side -> HTTP status (first match; subclasses first).
ERROR_STATUS: list[tuple[type[BaseException], int]] = [
    (ImageTooLargeError, 413),
    (ImageLoadError, 400),
    (QuestionError, 422),
    (QueueFullError, 503),
    (SchedulerClosedError, 503),
]


@dataclass
class ApiConfig:
    """limits: what one request may ask. max_conversations, max_images: conversations and images kept for
    follow-up questions (least recently used dropped first). idle_minutes: how long an unused one is kept.
    model_name: shown by /health."""

    limits: RequestLimits = field(default_factory=RequestLimits)
    max_conversations: int = 256
    max_images: int = 64
    idle_minutes: float = 30.0
    model_name: str = ""


class AnswerRequest(BaseModel):
    """The JSON form of a question. Send one of image_base64, image_id, conversation_id."""

    model_config = ConfigDict(extra="forbid")

    question: str
    image_base64: str | None = None
    image_id: str | None = None
    conversation_id: str | None = None
    max_new_tokens: int | None = None


class Rle(BaseModel):
    size: list[int]
    counts: str


class TargetOut(BaseModel):
    phrase: str
    bbox: list[int]
    area: int
    score: float
    rle: Rle


class TimingsOut(BaseModel):
    """queue_ms: waiting for the model; model_ms: the batch that answered (image encoding, generation,
    masks); total_ms: from the request's arrival to the answer; batch_size: questions in that batch."""

    queue_ms: float
    model_ms: float
    total_ms: float
    batch_size: int


class AnswerOut(BaseModel):
    conversation_id: str
    image_id: str
    question: str
    answer: str
    targets: list[TargetOut]
    warnings: list[str]
    timings: TimingsOut


class ErrorOut(BaseModel):
    detail: str


class HealthOut(BaseModel):
    status: str
    model: str
    max_batch_size: int
    waiting: int
    conversations: int
    images: int
    batches: dict[str, int]


_FORM_FIELDS = {
    "image": {"type": "string", "format": "binary", "description": "the image file (PNG, JPEG, WebP, BMP, GIF, TIFF)"},
    "question": {"type": "string"},
    "image_id": {"type": "string"},
    "conversation_id": {"type": "string"},
    "max_new_tokens": {"type": "integer"},
}
_REQUEST_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {"schema": {"type": "object", "properties": _FORM_FIELDS, "required": ["question"]}},
            "application/json": {"schema": AnswerRequest.model_json_schema()},
        },
    }
}
_ERROR_RESPONSES = {
    status: {"model": ErrorOut, "description": description}
    for status, description in [
        (400, "bad request: unreadable image, bad base64, missing or conflicting fields"),
        (404, "unknown or expired image_id / conversation_id"),
        (413, "image or request too large (bytes or pixels, decompression bomb)"),
        (415, "body neither multipart/form-data nor application/json"),
        (422, "empty or too long question, max_new_tokens out of range, prompt over the context limit"),
        (500, "internal error (the server keeps running)"),
        (503, "too many questions waiting; retry shortly"),
    ]
}


@dataclass
class _Conversation:
    session: ChatSession
    image_id: str


@dataclass
class _Question:
    """A parsed request: the conversation it belongs to and what to ask."""

    conversation_id: str
    conversation: _Conversation
    question: str
    max_new_tokens: int
    received: float


class AnswerApi:
    """The API's state (conversations, images) and route handlers."""

    def __init__(self, scheduler: BatchScheduler, config: ApiConfig) -> None:
        self.scheduler = scheduler
        self.config = config
        idle = config.idle_minutes * 60
        self.conversations: ExpiringStore[_Conversation] = ExpiringStore(config.max_conversations, idle)
        self.images: ExpiringStore[ImageEmbedding] = ExpiringStore(config.max_images, idle)
        # The request limits; alpha, when the limits leave it open, as the model folder says.
        model_alpha = scheduler.predictor.image_load_config.alpha
        self.image_load_config = dataclasses.replace(config.limits.image_load_config, alpha=config.limits.alpha or model_alpha)

    # -- routes ------------------------------------------------------------------------------------------
    async def answer(self, request: Request) -> Response:
        """Ask a question about an image; the answer with one COCO RLE mask per target."""
        try:
            asked = await self._parse(request)
            stream = self._submit(asked)
            answer = await run_in_threadpool(stream.result)
            return JSONResponse(await run_in_threadpool(self._record, asked, stream, answer))
        except Exception as exc:  # every failure becomes a JSON error; the server goes on
            return _error_response(exc)

    async def answer_stream(self, request: Request) -> Response:
        """The same question, answered as newline-delimited JSON: text events, then the answer (or an error)."""
        try:
            asked = await self._parse(request)
            stream = self._submit(asked)
            await run_in_threadpool(stream.wait_accepted)
        except Exception as exc:
            return _error_response(exc)
        return StreamingResponse(self._events(asked, stream), media_type="application/x-ndjson")

    async def health(self) -> HealthOut:
        """Liveness and load: questions waiting, conversations and images kept, batches run by size."""
        scheduler = self.scheduler
        return HealthOut(
            status="ok",
            model=self.config.model_name,
            max_batch_size=scheduler.config.max_batch_size,
            waiting=scheduler.waiting,
            conversations=len(self.conversations),
            images=len(self.images),
            batches={str(size): count for size, count in sorted(scheduler.batch_sizes.items())},
        )

    async def delete_conversation(self, conversation_id: str) -> Response:
        """Forget a conversation (its image stays available by image_id)."""
        if not self.conversations.remove(conversation_id):
            return _error_response(ApiError(404, _unknown("conversation_id", conversation_id, self.config)))
        return Response(status_code=204)

    # -- steps ---------------------------------------------------------------------------------------------
    async def _parse(self, request: Request) -> _Question:
        received = time.monotonic()
        limits = self.config.limits
        fields, image = await _read_fields(request, limits.max_upload_bytes * 4 // 3 + _BODY_SLACK)
        question = limits.question(fields.get("question"))
        max_new_tokens = limits.answer_tokens(_as_int(fields.get("max_new_tokens"), "max_new_tokens"))
        conversation_id, image_id = fields.get("conversation_id"), fields.get("image_id")
        given = [name for name, value in [("an image", image), ("image_id", image_id)] if value is not None]
        if conversation_id is not None:
            if given:
                raise ApiError(400, f"send either conversation_id (a follow-up) or {' / '.join(given)} (a new conversation), not both")
            conversation = self.conversations.get(conversation_id)
            if conversation is None:
                raise ApiError(404, _unknown("conversation_id", conversation_id, self.config))
            return _Question(conversation_id, conversation, question, max_new_tokens, received)
        if len(given) != 1:
            raise ApiError(
                400,
                "send exactly one of: an image (multipart field 'image' or JSON 'image_base64'), an image_id "
                "(a new conversation about an image sent before) or a conversation_id (a follow-up question)",
            )
        if image is not None:
            embedding = ImageEmbedding(await run_in_threadpool(load_image, image, self.image_load_config))
            image_id = self.images.add(embedding)
        else:
            embedding = self.images.get(image_id)
            if embedding is None:
                raise ApiError(404, _unknown("image_id", image_id, self.config))
        conversation = _Conversation(self.scheduler.start(embedding), image_id)
        return _Question(self.conversations.add(conversation), conversation, question, max_new_tokens, received)

    def _submit(self, asked: _Question) -> AnswerStream:
        return self.scheduler.submit(asked.conversation.session, asked.question, asked.max_new_tokens)

    def _record(self, asked: _Question, stream: AnswerStream, answer: Answer) -> dict[str, Any]:
        """The AnswerOut JSON of a finished answer."""
        asked.conversation.session.embedding.release_pixels()
        record = answer_record(answer.question, answer.text, answer.export_targets(), answer.warnings)
        timings = stream.timings
        return {
            "conversation_id": asked.conversation_id,
            "image_id": asked.conversation.image_id,
            **record,
            "timings": {
                "queue_ms": round(1000 * timings.queue_s, 2),
                "model_ms": round(1000 * timings.model_s, 2),
                "total_ms": round(1000 * (time.monotonic() - asked.received), 2),
                "batch_size": timings.batch_size,
            },
        }

    def _events(self, asked: _Question, stream: AnswerStream) -> Iterator[str]:
        """NDJSON lines: text pieces as they are generated, then the answer or the error."""
        for chunk in stream:
            yield json.dumps({"type": "text", "text": chunk}, ensure_ascii=False) + "\n"
        try:
            record = self._record(asked, stream, stream.result())
        except Exception as exc:
            status, detail = _status_of(exc)
            yield json.dumps({"type": "error", "status": status, "detail": detail}, ensure_ascii=False) + "\n"
            return
        yield json.dumps({"type": "answer", **record}, ensure_ascii=False) + "\n"


def build_api_router(scheduler: BatchScheduler, config: ApiConfig | None = None) -> APIRouter:
    """The API's routes under /api/v1, answering through ``scheduler``."""
    api = AnswerApi(scheduler, config or ApiConfig())
    router = APIRouter(prefix=API_PREFIX, tags=["PixelLM"])
    router.add_api_route(
        "/answer", api.answer, methods=["POST"], response_model=AnswerOut, responses=_ERROR_RESPONSES,
        openapi_extra=_REQUEST_BODY, summary="Answer a question about an image",
    )
    router.add_api_route(
        "/answer/stream", api.answer_stream, methods=["POST"], responses={
            200: {"content": {"application/x-ndjson": {}}, "description": "one JSON event per line: text..., then answer or error"},
            **_ERROR_RESPONSES,
        }, openapi_extra=_REQUEST_BODY, summary="Answer a question, streaming the text",
    )
    router.add_api_route("/health", api.health, methods=["GET"], response_model=HealthOut, summary="Health and load")
    router.add_api_route(
        "/conversations/{conversation_id}", api.delete_conversation, methods=["DELETE"], status_code=204,
        responses={404: _ERROR_RESPONSES[404]}, summary="Forget a conversation",
    )
    return router


# -- request parsing -----------------------------------------------------------------------------------------
async def _read_fields(request: Request, max_bytes: int) -> tuple[dict[str, str], bytes | None]:
    """The request's text fields and image bytes (None when it sent none), from multipart or JSON."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type not in ("multipart/form-data", "application/json"):
        raise ApiError(415, f"send multipart/form-data (with an 'image' file) or application/json (with 'image_base64'), not {content_type or 'no content type'!r}")
    body = await _read_body(request, max_bytes)
    if content_type == "application/json":
        return _json_fields(body)
    return await _form_fields(request, body)


async def _read_body(request: Request, max_bytes: int) -> bytes:
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > max_bytes:
        raise ApiError(413, _too_large(int(declared), max_bytes))
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_bytes:
            raise ApiError(413, _too_large(size, max_bytes))
        chunks.append(chunk)
    return b"".join(chunks)


def _json_fields(body: bytes) -> tuple[dict[str, str], bytes | None]:
    try:
        data = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ApiError(400, f"the body is not valid JSON ({exc})") from exc
    try:
        parsed = AnswerRequest.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {e['msg']}" for e in exc.errors())
        raise ApiError(400, f"the JSON body does not fit (fields: {', '.join(AnswerRequest.model_fields)}): {problems}") from exc
    fields = parsed.model_dump(exclude={"image_base64"}, exclude_none=True)
    image = None
    if parsed.image_base64 is not None:
        encoded = parsed.image_base64
        if encoded.startswith("data:") and "," in encoded:
            encoded = encoded.split(",", 1)[1]
        try:
            image = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise ApiError(400, f"image_base64 is not valid base64 ({exc})") from exc
    return fields, image


async def _form_fields(request: Request, body: bytes) -> tuple[dict[str, str], bytes | None]:
    async def once() -> AsyncIterator[bytes]:
        yield body

    try:
        form = await MultiPartParser(request.headers, once(), max_files=1, max_fields=len(_FORM_FIELDS), max_part_size=64 * 1024).parse()
    except MultiPartException as exc:
        raise ApiError(400, f"the multipart body cannot be read ({exc.message})") from exc
    try:
        fields, image = {}, None
        for name, value in form.multi_items():
            if name not in _FORM_FIELDS:
                raise ApiError(400, f"unknown form field {name!r}; the fields are {', '.join(_FORM_FIELDS)}")
            if isinstance(value, UploadFile) != (name == "image"):
                raise ApiError(400, "'image' must be a file part, the other fields text" if name == "image" else f"{name!r} must be text, not a file")
            if name == "image":
                image = await value.read()
            else:
                fields[name] = value
        return fields, image
    finally:
        await form.close()


def _as_int(value: Any, name: str) -> int | None:
    if value is None or isinstance(value, int):
        return value
    try:
        return int(value)
    except ValueError as exc:
        raise QuestionError(f"{name} must be a whole number, got {value!r}") from exc


def _too_large(size: int, max_bytes: int) -> str:
    return f"the request is {size / 2**20:.1f} MiB, over this server's limit of {max_bytes / 2**20:.1f} MiB for one image and its question"


def _unknown(name: str, value: str, config: ApiConfig) -> str:
    return (
        f"{name} {value!r} is unknown or expired: this server keeps {name.split('_')[0]}s for {config.idle_minutes:g} minutes "
        "after their last use (and only the most recent ones). Send the image again to start a new conversation."
    )


def _status_of(exc: BaseException) -> tuple[int, str]:
    if isinstance(exc, ApiError):
        return exc.status, exc.detail
    for kind, status in ERROR_STATUS:
        if isinstance(exc, kind):
            return status, str(exc)
    logger.error("internal error answering a request", exc_info=exc)
    return 500, f"internal error ({type(exc).__name__}: {exc}); the server keeps running, try again"


def _error_response(exc: BaseException) -> JSONResponse:
    status, detail = _status_of(exc)
    return JSONResponse({"detail": detail}, status_code=status)
