"""BatchScheduler on the tiny model: questions that wait are answered together, and the answers (tokens,
text, masks) are the ones each question gets alone; errors stay with their question; the worker survives."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import pytest

from forced_answers import ForcedAnswers, answer_ids
from model.tiny import build_tiny
from serving.predictor import Answer, ChatSession, PixelLMPredictor, QuestionError
from serving.scheduler import BatchScheduler, QueueFullError, SchedulerClosedError, SchedulerConfig

QUESTIONS = ["Segment the red box.", "What is this? Tell me more about it, in many words please.", "Hi", "And the other one?"]
SCRIPTS = ["The chili{S} and the curry{S}.", "A dog{S}.", "Nothing here.", "The lid{S}, at last."]


@pytest.fixture(scope="module")
def predictor(tmp_path_factory: pytest.TempPathFactory) -> PixelLMPredictor:
    return PixelLMPredictor.from_pretrained(build_tiny(tmp_path_factory.mktemp("tiny"), seed=0))


@pytest.fixture
def scheduler(predictor: PixelLMPredictor) -> Iterator[BatchScheduler]:
    scheduler = BatchScheduler(predictor, SchedulerConfig(max_batch_size=8, max_queue=6))
    yield scheduler
    scheduler.close()


@contextmanager
def held(predictor: PixelLMPredictor) -> Iterator[tuple[threading.Event, threading.Event, list[int]]]:
    """The first reply_batch call waits for ``release``, so questions submitted meanwhile queue up.
    Yields (entered, release, batch sizes of the calls)."""
    entered, release, sizes = threading.Event(), threading.Event(), []
    original = predictor.reply_batch

    def gated(sessions, *args, **kwargs):
        sizes.append(len(sessions))
        if len(sizes) == 1:
            entered.set()
            release.wait(60)
        return original(sessions, *args, **kwargs)

    predictor.reply_batch = gated
    try:
        yield entered, release, sizes
    finally:
        release.set()
        del predictor.reply_batch


def conversations(predictor: PixelLMPredictor) -> list[ChatSession]:
    """Four conversations: three new images not embedded yet, and one with a first answer (so its image has
    decoder-side features: the batch mixes images with and without them)."""
    rng = np.random.default_rng(1)
    images = [rng.integers(0, 256, shape, dtype=np.uint8) for shape in [(60, 90, 3), (100, 40, 3), (33, 33, 3), (48, 64, 3)]]
    sessions = [ChatSession(predictor.load(image)) for image in images]
    with ForcedAnswers(predictor.model, [[answer_ids(predictor.tokenizer, "The pan{S}.")]]):
        predictor.reply(sessions[3], "Segment the pan.", max_new_tokens=20)
    assert sessions[3].features.decoder_features is not None and sessions[0].features is None
    return sessions


def assert_same(a: Answer, b: Answer) -> None:
    assert a.token_ids == b.token_ids and a.text == b.text and a.warnings == b.warnings
    assert len(a.targets) == len(b.targets)
    for ta, tb in zip(a.targets, b.targets):
        assert ta.phrase == tb.phrase and ta.bbox == tb.bbox
        np.testing.assert_array_equal(ta.mask, tb.mask)
        assert ta.score == pytest.approx(tb.score, abs=1e-5)


def answer_batched(predictor: PixelLMPredictor, scheduler: BatchScheduler, sessions: list[ChatSession], budgets: list[int]) -> tuple[list[Answer], list[str], list[int]]:
    """Hold the worker on a first question, queue one question per session, release: they form one batch.
    Returns the answers, the streamed texts and the batch sizes."""
    blocker = ChatSession(predictor.load(np.zeros((20, 20, 3), dtype=np.uint8)))
    with held(predictor) as (entered, release, sizes):
        first = scheduler.submit(blocker, "Wait.", 5)
        entered.wait(60)
        streams = [scheduler.submit(s, q, n) for s, q, n in zip(sessions, QUESTIONS, budgets)]
        release.set()
        first.result(60)
        texts = ["".join(stream) for stream in streams]
        answers = [stream.result(60) for stream in streams]
    assert all(stream.timings.batch_size == len(sessions) for stream in streams)
    return answers, texts, sizes


def test_batched_answers_equal_answers_alone(predictor: PixelLMPredictor, scheduler: BatchScheduler) -> None:
    budgets = [40, 40, 12, 30]
    scripts = [answer_ids(predictor.tokenizer, s) for s in SCRIPTS]
    alone_sessions = conversations(predictor)
    with ForcedAnswers(predictor.model, [[s] for s in scripts]):
        alone = [predictor.reply(s, q, n) for s, q, n in zip(alone_sessions, QUESTIONS, budgets)]
    batch_sessions = conversations(predictor)
    with ForcedAnswers(predictor.model, [[scripts[0]], scripts]):
        batched, texts, sizes = answer_batched(predictor, scheduler, batch_sessions, budgets)
    assert sizes == [1, 4]
    assert [len(a.targets) for a in batched] == [2, 1, 0, 1]
    for a, b, text in zip(batched, alone, texts):
        assert_same(a, b)
        assert text == a.text
    assert [len(s.history) for s in batch_sessions] == [1, 1, 1, 2]
    # The batch computed the decoder-side features of the new images; each image keeps its own copy.
    assert all(s.features.decoder_features is not None and s.features.clip_levels is None for s in batch_sessions)


def test_free_generation_is_the_same_in_a_batch(predictor: PixelLMPredictor, scheduler: BatchScheduler) -> None:
    """No forced tokens: the greedy tokens of the random model do not depend on the batch (budgets differ)."""
    budgets = [25, 9, 17, 25]
    alone = [predictor.reply(s, q, n) for s, q, n in zip(conversations(predictor), QUESTIONS, budgets)]
    batched, texts, _ = answer_batched(predictor, scheduler, conversations(predictor), budgets)
    for a, b, text, n in zip(batched, alone, texts, budgets):
        assert_same(a, b)
        assert text == a.text and len(a.token_ids) <= n


def test_a_conversation_never_shares_a_batch_with_itself(predictor: PixelLMPredictor, scheduler: BatchScheduler) -> None:
    session = ChatSession(predictor.load(np.full((30, 30, 3), 90, dtype=np.uint8)))
    other = ChatSession(predictor.load(np.full((30, 30, 3), 20, dtype=np.uint8)))
    blocker = ChatSession(predictor.load(np.zeros((20, 20, 3), dtype=np.uint8)))
    with held(predictor) as (entered, release, sizes):
        scheduler.submit(blocker, "Wait.", 3)
        entered.wait(60)
        streams = [scheduler.submit(session, "First?", 6), scheduler.submit(other, "Other?", 6), scheduler.submit(session, "Second?", 6)]
        release.set()
        for stream in streams:
            stream.result(60)
    assert sizes == [1, 2, 1]
    assert [turn.question.split("\n")[-1] for turn in session.history] == ["First?", "Second?"]


def test_errors_stay_with_their_question_and_the_worker_goes_on(predictor: PixelLMPredictor, scheduler: BatchScheduler) -> None:
    sessions = [ChatSession(predictor.load(np.full((30, 30, 3), v, dtype=np.uint8))) for v in (10, 20)]
    long_question = "Please segment the " + "very " * 1200 + "small dog."
    bad = scheduler.submit(sessions[0], long_question, 8)
    good = scheduler.submit(sessions[1], "Segment it.", 8)
    with pytest.raises(QuestionError, match="context limit"):
        bad.result(60)
    assert list(bad) == [] and len(good.result(60).token_ids) <= 8

    def out_of_memory(*args, **kwargs):
        raise RuntimeError("CUDA out of memory")

    predictor.reply_batch = out_of_memory
    try:
        broken = scheduler.submit(sessions[0], "Segment it.", 8)
        with pytest.raises(RuntimeError, match="out of memory"):
            broken.result(60)
    finally:
        del predictor.reply_batch
    assert sessions[0].history == []
    assert scheduler.reply(sessions[0], "Segment it.", 8).question == "Segment it."


def test_queue_limit_and_close(predictor: PixelLMPredictor) -> None:
    scheduler = BatchScheduler(predictor, SchedulerConfig(max_batch_size=2, max_queue=2))
    sessions = [ChatSession(predictor.load(np.full((20, 20, 3), v, dtype=np.uint8))) for v in range(4)]
    with held(predictor) as (entered, release, _):
        scheduler.submit(sessions[0], "Wait.", 3)
        entered.wait(60)
        waiting = [scheduler.submit(s, "Hi", 3) for s in sessions[1:3]]
        with pytest.raises(QueueFullError, match="2 questions are already waiting"):
            scheduler.submit(sessions[3], "Hi", 3)
        assert scheduler.waiting == 2
        closer = threading.Thread(target=scheduler.close)
        closer.start()
        for stream in waiting:
            with pytest.raises(SchedulerClosedError):
                stream.result(60)
        release.set()
        closer.join(60)
    with pytest.raises(SchedulerClosedError):
        scheduler.submit(sessions[3], "Hi", 3)


def test_a_busy_server_gathers_a_batch_and_a_lone_user_waits_for_nothing(predictor: PixelLMPredictor) -> None:
    scheduler = BatchScheduler(predictor, SchedulerConfig(max_batch_size=4, gather_ms=3000))
    try:
        lone = scheduler.submit(ChatSession(predictor.load(np.zeros((20, 20, 3), dtype=np.uint8))), "Hi", 3)
        lone.result(60)
        assert lone.timings.queue_s < 1.0  # the last batch had one question: no gathering
        sessions = [ChatSession(predictor.load(np.full((20, 20, 3), v, dtype=np.uint8))) for v in range(4)]
        with held(predictor) as (entered, release, _):
            scheduler.submit(sessions[0], "Wait.", 3)
            entered.wait(60)
            pair = [scheduler.submit(s, "Hi", 3) for s in sessions[1:3]]
            release.set()
            for stream in pair:
                stream.result(60)
        # The last batch had two questions: the next one waits (up to 3 s) for a second question.
        first = scheduler.submit(sessions[1], "Again?", 3)
        time.sleep(0.3)
        second = scheduler.submit(sessions[2], "Again?", 3)
        first.result(60), second.result(60)
        assert first.timings.batch_size == second.timings.batch_size == 2
        assert 0.25 < first.timings.queue_s < 2.5
    finally:
        scheduler.close()
