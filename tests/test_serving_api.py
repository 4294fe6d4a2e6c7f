"""The HTTP API on the tiny model (FastAPI's TestClient, in process): round trip with RLE masks equal to chat.py's
PNG masks, follow-ups by image id and conversation id, streamed == not streamed, every bad input answered with
its status code and message while the server keeps answering, bounded conversation storage."""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from PIL import Image

from forced_answers import ForcedAnswers, answer_ids
from model.tiny import build_tiny
from serving.export import rle_to_mask
from serving.http_api import ApiConfig, build_api_router
from serving.predictor import PixelLMPredictor
from serving.request_limits import RequestLimits
from serving.scheduler import BatchScheduler, SchedulerConfig
from serving.session_store import ExpiringStore
from serving.terminal_chat import TerminalChatConfig, answer_once

LIMITS = RequestLimits(max_new_tokens=64, max_upload_mb=0.05, max_pixels=1_000_000, max_question_chars=10_000)


@pytest.fixture(scope="module")
def predictor(tmp_path_factory: pytest.TempPathFactory) -> PixelLMPredictor:
    return PixelLMPredictor.from_pretrained(build_tiny(tmp_path_factory.mktemp("tiny"), seed=0))


@pytest.fixture(scope="module")
def scheduler(predictor: PixelLMPredictor) -> Iterator[BatchScheduler]:
    scheduler = BatchScheduler(predictor, SchedulerConfig(max_batch_size=4))
    yield scheduler
    scheduler.close()


def make_client(scheduler: BatchScheduler, **config) -> TestClient:
    app = FastAPI()
    app.include_router(build_api_router(scheduler, ApiConfig(limits=LIMITS, **config)))
    return TestClient(app)


@pytest.fixture(scope="module")
def client(scheduler: BatchScheduler) -> TestClient:
    return make_client(scheduler)


def png_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def image_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("img") / "kitchen.png"
    path.write_bytes(png_bytes(np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8)))
    return path


def upload(client: TestClient, path: Path, question: str, **fields) -> dict:
    response = client.post(
        "/api/v1/answer", files={"image": (path.name, path.read_bytes(), "image/png")}, data={"question": question, **fields}
    )
    assert response.status_code == 200, response.text
    return response.json()


def test_round_trip_masks_equal_the_png_masks_of_chat_py(
    predictor: PixelLMPredictor, client: TestClient, image_path: Path, tmp_path: Path
) -> None:
    script = answer_ids(predictor.tokenizer, "The pan{S} and the lid{S}.")
    question = "Segment the pan and the lid."
    with ForcedAnswers(predictor.model, [[script], [script]]):
        record = upload(client, image_path, question, max_new_tokens="40")
        answer_once(predictor, str(image_path), question, TerminalChatConfig(out_dir=tmp_path, max_new_tokens=40), io.StringIO())
    assert record["answer"] == "The pan and the lid." and record["question"] == question
    assert [t["phrase"] for t in record["targets"]] == ["pan", "lid"]
    written = json.loads((tmp_path / "kitchen.json").read_text())
    assert {k: record[k] for k in written} == written  # the same record as chat.py's JSON
    for j, target in enumerate(record["targets"]):
        mask = rle_to_mask(target["rle"])
        png = np.asarray(Image.open(tmp_path / f"kitchen_mask_{j}.png"))
        np.testing.assert_array_equal(mask, png == 255)
        assert target["area"] == int(mask.sum()) and mask.shape == (48, 64)
    timings = record["timings"]
    assert timings["batch_size"] == 1 and timings["total_ms"] >= timings["model_ms"] > 0
    assert record["warnings"] == []


def test_follow_ups_by_conversation_and_by_image_reuse_the_embedding(
    predictor: PixelLMPredictor, client: TestClient, image_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    encodes, prompts = [], []
    encode, generate = predictor.model.encode_images, predictor.model.generate_with_masks
    monkeypatch.setattr(predictor.model, "encode_images", lambda *a, **k: encodes.append(1) or encode(*a, **k))
    monkeypatch.setattr(predictor.model, "generate_with_masks", lambda **k: prompts.append(k["input_ids"][0].tolist()) or generate(**k))
    first_script = answer_ids(predictor.tokenizer, "The cat{S}.")
    with ForcedAnswers(predictor.model, [[first_script], [answer_ids(predictor.tokenizer, "The dog{S}.")], [first_script]]):
        first = upload(client, image_path, "Segment the cat.")
        follow = client.post("/api/v1/answer", json={"conversation_id": first["conversation_id"], "question": "Now the dog?"}).json()
        again = client.post("/api/v1/answer", json={"image_id": first["image_id"], "question": "Segment the cat."}).json()
    assert len(encodes) == 1
    assert follow["conversation_id"] == first["conversation_id"] and follow["image_id"] == first["image_id"]
    assert [t["phrase"] for t in follow["targets"]] == ["dog"]
    assert again["image_id"] == first["image_id"] and again["conversation_id"] != first["conversation_id"]
    # The follow-up's prompt holds the first turn; the new conversation's prompt does not.
    assert prompts[1][: len(prompts[0]) + len(first_script)] == prompts[0] + first_script
    assert prompts[2] == prompts[0]
    np.testing.assert_array_equal(rle_to_mask(again["targets"][0]["rle"]), rle_to_mask(first["targets"][0]["rle"]))
    assert client.delete(f"/api/v1/conversations/{first['conversation_id']}").status_code == 204
    gone = client.post("/api/v1/answer", json={"conversation_id": first["conversation_id"], "question": "Hi"})
    assert gone.status_code == 404 and "unknown or expired" in gone.json()["detail"]


def read_events(client: TestClient, payload: dict) -> list[dict]:
    with client.stream("POST", "/api/v1/answer/stream", json=payload) as response:
        assert response.status_code == 200 and response.headers["content-type"].startswith("application/x-ndjson")
        return [json.loads(line) for line in response.iter_lines() if line]


def test_streamed_answer_equals_the_answer_not_streamed(predictor: PixelLMPredictor, client: TestClient, image_path: Path) -> None:
    script = answer_ids(predictor.tokenizer, "Sure, the pan{S} is left of the lid{S} and the spoon.")
    encoded = base64.b64encode(image_path.read_bytes()).decode()
    with ForcedAnswers(predictor.model, [[script], [script]]):
        plain = client.post("/api/v1/answer", json={"image_base64": encoded, "question": "Where are they?", "max_new_tokens": 50}).json()
        events = read_events(client, {"image_id": plain["image_id"], "question": "Where are they?", "max_new_tokens": 50})
    texts = [e for e in events if e["type"] == "text"]
    final = events[-1]
    assert [e["type"] for e in events] == ["text"] * len(texts) + ["answer"] and len(texts) > 1
    assert "".join(e["text"] for e in texts) == final["answer"] == plain["answer"]
    ignore = {"conversation_id", "timings", "type"}
    assert {k: v for k, v in final.items() if k not in ignore} == {k: v for k, v in plain.items() if k not in ignore}
    assert len(final["targets"]) == 2


def noise_png(side: int) -> bytes:
    return png_bytes(np.random.default_rng(side).integers(0, 256, (side, side, 3), dtype=np.uint8))


def bad_requests(image_path: Path) -> list[tuple[str, dict, int, str]]:
    good = image_path.read_bytes()
    bomb = io.BytesIO()
    Image.new("L", (2000, 1000)).save(bomb, format="PNG")  # 2 MP in a few KB
    long_question = "Please segment the " + "very " * 1200 + "small dog."
    return [
        ("not an image", {"files": {"image": ("a.png", b"this is not an image", "image/png")}, "data": {"question": "Hi"}}, 400, "not a readable image"),
        ("truncated", {"files": {"image": ("a.png", good[: len(good) // 2], "image/png")}, "data": {"question": "Hi"}}, 400, "truncated or corrupt"),
        ("over the byte limit", {"files": {"image": ("a.png", noise_png(160), "image/png")}, "data": {"question": "Hi"}}, 413, "over the size limit"),
        ("body too large", {"files": {"image": ("a.png", noise_png(300), "image/png")}, "data": {"question": "Hi"}}, 413, "over this server's limit"),
        ("bomb", {"files": {"image": ("a.png", bomb.getvalue(), "image/png")}, "data": {"question": "Hi"}}, 413, "megapixels"),
        ("empty question", {"files": {"image": ("a.png", good, "image/png")}, "data": {"question": "  "}}, 422, "question is empty"),
        ("question too long", {"json": {"image_base64": base64.b64encode(good).decode(), "question": "x" * 10_001}}, 422, "over the limit of 10000"),
        ("over the context", {"json": {"image_base64": base64.b64encode(good).decode(), "question": long_question}}, 422, "context limit"),
        ("no image", {"json": {"question": "Hi"}}, 400, "send exactly one of"),
        ("two images", {"files": {"image": ("a.png", good, "image/png")}, "data": {"question": "Hi", "image_id": "abc"}}, 400, "send exactly one of"),
        ("conversation and image", {"files": {"image": ("a.png", good, "image/png")}, "data": {"question": "Hi", "conversation_id": "abc"}}, 400, "not both"),
        ("unknown conversation", {"json": {"conversation_id": "0" * 32, "question": "Hi"}}, 404, "conversation_id '000"),
        ("unknown image", {"json": {"image_id": "nope", "question": "Hi"}}, 404, "image_id 'nope' is unknown or expired"),
        ("bad base64", {"json": {"image_base64": "%%%", "question": "Hi"}}, 400, "not valid base64"),
        ("bad JSON", {"content": b"{not json", "headers": {"content-type": "application/json"}}, 400, "not valid JSON"),
        ("unknown JSON field", {"json": {"image": "abc", "question": "Hi"}}, 400, "image: Extra inputs are not permitted"),
        ("unknown form field", {"files": {"picture": ("a.png", good, "image/png")}, "data": {"question": "Hi"}}, 400, "unknown form field 'picture'"),
        ("text body", {"content": b"hello", "headers": {"content-type": "text/plain"}}, 415, "not 'text/plain'"),
        ("zero tokens", {"json": {"image_base64": base64.b64encode(good).decode(), "question": "Hi", "max_new_tokens": 0}}, 422, "from 1 to 64"),
        ("too many tokens", {"files": {"image": ("a.png", good, "image/png")}, "data": {"question": "Hi", "max_new_tokens": "65"}}, 422, "from 1 to 64"),
        ("tokens not a number", {"files": {"image": ("a.png", good, "image/png")}, "data": {"question": "Hi", "max_new_tokens": "ten"}}, 422, "whole number"),
    ]


@pytest.mark.parametrize("route", ["/api/v1/answer", "/api/v1/answer/stream"])
def test_bad_inputs_get_their_status_and_the_server_keeps_answering(client: TestClient, image_path: Path, route: str) -> None:
    for name, request, status, message in bad_requests(image_path):
        response = client.post(route, **request)
        assert response.status_code == status, (name, response.text)
        assert response.headers["content-type"] == "application/json" and message in response.json()["detail"], (name, response.text)
        assert "Traceback" not in response.text
    assert upload(client, image_path, "Segment it.", max_new_tokens="5")["answer"] is not None


def test_internal_errors_are_json_and_the_next_request_works(predictor: PixelLMPredictor, client: TestClient, image_path: Path) -> None:
    image_id = upload(client, image_path, "Hi", max_new_tokens="3")["image_id"]

    def out_of_memory(*args, **kwargs):
        raise RuntimeError("CUDA out of memory")

    predictor.reply_batch = out_of_memory
    try:
        failed = client.post("/api/v1/answer", json={"image_id": image_id, "question": "Hi"})
        events = read_events(client, {"image_id": image_id, "question": "Hi"})
    finally:
        del predictor.reply_batch
    message = "internal error (RuntimeError: CUDA out of memory); the server keeps running, try again"
    assert failed.status_code == 500 and failed.json() == {"detail": message}
    # The streamed variant had started (the question was accepted): the failure is its last event.
    assert events == [{"type": "error", "status": 500, "detail": message}]
    assert upload(client, image_path, "Segment it.", max_new_tokens="5")["targets"] is not None
    health = client.get("/api/v1/health").json()
    assert health["status"] == "ok" and health["waiting"] == 0 and health["max_batch_size"] == 4


def test_conversations_are_bounded_by_count(scheduler: BatchScheduler, image_path: Path) -> None:
    small = make_client(scheduler, max_conversations=2, max_images=1)
    first, second, third = (upload(small, image_path, "Hi", max_new_tokens="3") for _ in range(3))
    evicted = small.post("/api/v1/answer", json={"conversation_id": first["conversation_id"], "question": "Again?", "max_new_tokens": 3})
    assert evicted.status_code == 404 and "30 minutes" in evicted.json()["detail"]
    assert small.post("/api/v1/answer", json={"image_id": second["image_id"], "question": "Hi", "max_new_tokens": 3}).status_code == 404
    kept = small.post("/api/v1/answer", json={"conversation_id": third["conversation_id"], "question": "Again?", "max_new_tokens": 3})
    assert kept.status_code == 200
    health = small.get("/api/v1/health").json()
    assert health["conversations"] == 2 and health["images"] == 1


def test_expiring_store_drops_idle_and_least_recently_used_entries() -> None:
    now = [0.0]
    store: ExpiringStore[str] = ExpiringStore(max_items=2, max_idle_s=60, clock=lambda: now[0])
    a = store.add("a")
    now[0] = 30
    b = store.add("b")
    now[0] = 50
    assert store.get(a) == "a"  # a is used again: b is now the least recently used
    c = store.add("c")
    assert store.get(b) is None and store.get(a) == "a" and store.get(c) == "c"
    now[0] = 200
    assert store.get(a) is None and len(store) == 0
    assert not store.remove(c)
    with pytest.raises(ValueError, match="max_items"):
        ExpiringStore(max_items=0, max_idle_s=1)


def test_app_serves_the_page_the_api_and_its_docs_on_one_port(predictor: PixelLMPredictor, scheduler: BatchScheduler, image_path: Path, tmp_path: Path) -> None:
    """The server app.py runs (uvicorn, FastAPI, the Gradio page mounted at /), over real loopback HTTP."""
    import httpx

    from serving.server import BackgroundServer, build_server
    from serving.web_app import AppConfig

    app = build_server(scheduler, AppConfig(limits=LIMITS, output_dir=tmp_path), ApiConfig(limits=LIMITS, model_name="tiny"))
    with BackgroundServer(app) as url, httpx.Client(base_url=url, timeout=60) as http:
        assert "PixelLM" in http.get("/").text  # the page
        assert http.get("/docs").status_code == 200
        spec = http.get("/openapi.json").json()
        body = spec["paths"]["/api/v1/answer"]["post"]["requestBody"]["content"]
        assert set(body) == {"multipart/form-data", "application/json"}
        assert {"/api/v1/answer/stream", "/api/v1/health", "/api/v1/conversations/{conversation_id}"} <= set(spec["paths"])
        response = http.post("/api/v1/answer", files={"image": ("k.png", image_path.read_bytes(), "image/png")},
                             data={"question": "Segment it.", "max_new_tokens": "4"})
        assert response.status_code == 200 and response.json()["image_id"]
        with http.stream("POST", "/api/v1/answer/stream", json={"image_id": response.json()["image_id"], "question": "Hi", "max_new_tokens": 4}) as stream:
            events = [json.loads(line) for line in stream.iter_lines() if line]
        assert events[-1]["type"] == "answer"
        assert http.get("/api/v1/health").json()["model"] == "tiny"
