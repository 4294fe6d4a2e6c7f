"""BatchScheduler: one worker thread owns the model and answers waiting questions together.

    scheduler = BatchScheduler(predictor, SchedulerConfig(max_batch_size=8))
    session = scheduler.start("kitchen.jpg")             # loads the image; the worker embeds it
    stream = scheduler.submit(session, "Segment the chili.", max_new_tokens=128)
    for chunk in stream:                                  # the answer text as it is generated
        print(chunk, end="", flush=True)
    answer = stream.result()                              # the Answer, masks included

Any number of threads (web requests) may call ``submit``. The worker takes the questions that are
waiting, up to ``max_batch_size`` of them, and answers them in one ``PixelLMPredictor.reply_batch`` call
(images not yet embedded are embedded together; each question keeps its own ``max_new_tokens``);
questions that arrive meanwhile wait for the next batch. Clients that ask again as soon as they have
their answer come back a few milliseconds after it; so that they meet the questions that waited during
the batch instead of trickling into a second batch, the worker waits up to ``gather_ms`` for as many
questions as were waiting when the batch ended plus the batch's own (a lone user, one question after
the other, waits for nothing). Two questions of one conversation never share a batch: the later one is
answered after the earlier one, seeing its answer. ``max_batch_size=1`` answers one question at a time.
A question that fails (a ``QuestionError``, or an exception while its batch is generated) fails alone or
with its batch; the worker goes on with the next batch.

Batched answers equal one-by-one answers up to float rounding: prompts are left-padded and images encoded
together, which can change the last bits of a logit, and so, rarely, a greedy token whose two best
logits are that close (never seen in the tests, which compare token ids and masks exactly).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass

from .image_io import ImageSource
from .predictor import Answer, ChatSession, ImageEmbedding, PixelLMPredictor
from .text_stream import TextCallback

logger = logging.getLogger(__name__)

_END = object()


class QueueFullError(RuntimeError):
    """Too many questions are waiting (``SchedulerConfig.max_queue``); a server answers 503."""


class SchedulerClosedError(RuntimeError):
    """The scheduler was closed before the question was answered."""


@dataclass
class SchedulerConfig:
    """max_batch_size: questions answered in one generation call (1: one at a time).
    max_queue: questions allowed to wait; ``submit`` raises ``QueueFullError`` beyond.
    gather_ms: how long a batch may wait for the questions of busy clients (module docstring)."""

    max_batch_size: int = 8
    max_queue: int = 256
    gather_ms: float = 20.0

    def __post_init__(self) -> None:
        if self.max_batch_size < 1 or self.max_queue < 1:
            raise ValueError(f"max_batch_size and max_queue must be >= 1, got {self.max_batch_size} and {self.max_queue}")
        if self.gather_ms < 0:
            raise ValueError(f"gather_ms must be >= 0, got {self.gather_ms}")


@dataclass
class AnswerTimings:
    """Monotonic clock readings (seconds) of one question, and the size of the batch that answered it."""

    submitted: float = 0.0
    started: float = 0.0
    finished: float = 0.0
    batch_size: int = 0

    @property
    def queue_s(self) -> float:
        return max(0.0, self.started - self.submitted)

    @property
    def model_s(self) -> float:
        return max(0.0, self.finished - self.started)


class AnswerStream:
    """One question on its way through a scheduler.

    Iterate it (once, from one thread) for the answer text in pieces as it is generated; the pieces add up
    to ``Answer.text`` and the iteration ends when the answer is complete or failed. ``result()`` waits for
    the ``Answer`` or raises the exception that answering raised; ``wait_accepted()`` waits until the
    model took the question up (its prompt was built and checked). Fakes in tests drive it with
    ``accept`` / ``push_text`` / ``finish`` / ``fail``.
    """

    def __init__(self) -> None:
        self._chunks: queue.SimpleQueue = queue.SimpleQueue()
        self._accepted = threading.Event()
        self._taken_up = False
        self._done = threading.Event()
        self._answer: Answer | None = None
        self._error: BaseException | None = None
        self.timings = AnswerTimings(submitted=time.monotonic())

    def accept(self) -> None:
        self._taken_up = True
        self._accepted.set()

    def push_text(self, chunk: str) -> None:
        self._chunks.put(chunk)

    def finish(self, answer: Answer) -> None:
        self._answer = answer
        self._close()

    def fail(self, error: BaseException) -> None:
        self._error = error
        self._close()

    def _close(self) -> None:
        self.timings.finished = time.monotonic()
        self._done.set()
        self._accepted.set()
        self._chunks.put(_END)

    @property
    def done(self) -> bool:
        return self._done.is_set()

    def __iter__(self):
        while True:
            chunk = self._chunks.get()
            if chunk is _END:
                return
            yield chunk

    def wait_accepted(self, timeout: float | None = None) -> None:
        """Wait until the question is being answered; raises the error if it failed before that (a later
        failure comes with ``result``)."""
        if not self._accepted.wait(timeout):
            raise TimeoutError(f"the question was not taken up within {timeout} s")
        if not self._taken_up:
            raise self._error

    def result(self, timeout: float | None = None) -> Answer:
        if not self._done.wait(timeout):
            raise TimeoutError(f"no answer within {timeout} s")
        if self._error is not None:
            raise self._error
        return self._answer


@dataclass
class _Job:
    session: ChatSession
    question: str
    max_new_tokens: int
    stream: AnswerStream


class BatchScheduler:
    """Owns ``predictor``; answers questions from any thread in batches (module docstring)."""

    def __init__(self, predictor: PixelLMPredictor, config: SchedulerConfig | None = None) -> None:
        self.predictor = predictor
        self.config = config or SchedulerConfig()
        self.batch_sizes: Counter[int] = Counter()
        self._waiting: deque[_Job] = deque()
        self._cond = threading.Condition()
        self._closed = False
        self._expected = 1
        self._worker = threading.Thread(target=self._run, name="pixellm-scheduler", daemon=True)
        self._worker.start()

    def start(self, image: ImageSource | ImageEmbedding) -> ChatSession:
        """A new conversation about ``image``; it is embedded by the worker, with the batch of its first question."""
        return ChatSession(image if isinstance(image, ImageEmbedding) else self.predictor.load(image))

    def submit(self, session: ChatSession, question: str, max_new_tokens: int = 512) -> AnswerStream:
        """Queue ``question`` on ``session``; returns at once. Raises ``QueueFullError`` or ``SchedulerClosedError``."""
        stream = AnswerStream()
        with self._cond:
            if self._closed:
                raise SchedulerClosedError("the model worker has stopped (the server is shutting down)")
            if len(self._waiting) >= self.config.max_queue:
                raise QueueFullError(
                    f"{len(self._waiting)} questions are already waiting for the model (limit {self.config.max_queue}): try again shortly"
                )
            self._waiting.append(_Job(session, question, max_new_tokens, stream))
            self._cond.notify()
        return stream

    def reply(self, session: ChatSession, question: str, max_new_tokens: int = 512, on_text: TextCallback | None = None) -> Answer:
        """``submit`` and wait; ``on_text`` gets the text pieces in this thread."""
        stream = self.submit(session, question, max_new_tokens)
        for chunk in stream:
            if on_text is not None:
                on_text(chunk)
        return stream.result()

    @property
    def waiting(self) -> int:
        """Questions queued and not yet in a batch."""
        with self._cond:
            return len(self._waiting)

    def close(self, timeout: float | None = 30.0) -> None:
        """Stop after the running batch; questions still waiting fail with ``SchedulerClosedError``."""
        with self._cond:
            self._closed = True
            left = list(self._waiting)
            self._waiting.clear()
            self._cond.notify_all()
        for job in left:
            job.stream.fail(SchedulerClosedError("the server shut down before this question was answered"))
        self._worker.join(timeout)

    # -- the worker ----------------------------------------------------------------------------------------
    def _take_batch(self) -> list[_Job] | None:
        """Wait for questions; take up to max_batch_size of them in arrival order, one per conversation."""
        with self._cond:
            while not self._waiting and not self._closed:
                self._cond.wait()
            deadline = time.monotonic() + self.config.gather_ms / 1000
            while len(self._waiting) < self._expected and not self._closed and (left := deadline - time.monotonic()) > 0:
                self._cond.wait(left)
            if self._closed:
                return None
            batch, kept, seen = [], deque(), set()
            for job in self._waiting:
                if len(batch) < self.config.max_batch_size and id(job.session) not in seen:
                    batch.append(job)
                    seen.add(id(job.session))
                else:
                    kept.append(job)
            self._waiting = kept
            return batch

    def _run(self) -> None:
        while (batch := self._take_batch()) is not None:
            started = time.monotonic()
            for job in batch:
                job.stream.timings.started = started
                job.stream.timings.batch_size = len(batch)
            self.batch_sizes[len(batch)] += 1
            self._answer(batch)
            with self._cond:
                # The clients just answered are likely to ask again at once; the waiting ones are here already.
                self._expected = min(self.config.max_batch_size, len(self._waiting) + len(batch))

    def _answer(self, batch: list[_Job]) -> None:
        ready = []
        for job in batch:
            try:
                self.predictor.prompt_ids(job.session.history, job.question, job.max_new_tokens)
            except Exception as exc:  # QuestionError and the like: this question only
                job.stream.fail(exc)
            else:
                job.stream.accept()
                ready.append(job)
        if not ready:
            return
        try:
            answers = self.predictor.reply_batch(
                [j.session for j in ready], [j.question for j in ready], [j.max_new_tokens for j in ready], [j.stream.push_text for j in ready]
            )
        except Exception as exc:  # the worker must survive anything a batch raises
            logger.exception("answering a batch of %d questions failed", len(ready))
            for job in ready:
                job.stream.fail(exc)
            return
        for job, answer in zip(ready, answers):
            job.stream.finish(answer)
