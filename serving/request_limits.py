"""RequestLimits: what one request may ask of a server; the web page and the HTTP API check the same ones."""

from __future__ import annotations

from dataclasses import dataclass

from .image_io import ImageLoadConfig
from .predictor import QuestionError


@dataclass(frozen=True)
class RequestLimits:
    """max_new_tokens: the default and the largest answer length a request may ask for.
    max_upload_mb: largest image file. max_pixels: largest width * height (decompression-bomb guard).
    max_question_chars: longest question (the model's context limit is checked too, once the prompt with
    its history is built). alpha: images with an alpha channel, "white" or "drop" (None: "white")."""

    max_new_tokens: int = 512
    max_upload_mb: float = 10.0
    max_pixels: int = 25_000_000
    max_question_chars: int = 2000
    alpha: str | None = None

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1 or self.max_question_chars < 1:
            raise ValueError(f"max_new_tokens and max_question_chars must be >= 1, got {self.max_new_tokens} and {self.max_question_chars}")
        if self.max_upload_mb <= 0 or self.max_pixels <= 0:
            raise ValueError(f"max_upload_mb and max_pixels must be positive, got {self.max_upload_mb} and {self.max_pixels}")

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 2**20)

    @property
    def image_load_config(self) -> ImageLoadConfig:
        return ImageLoadConfig(max_pixels=self.max_pixels, max_bytes=self.max_upload_bytes, alpha=self.alpha)

    def question(self, text: str | None) -> str:
        """The question without surrounding spaces; ``QuestionError`` when empty or too long."""
        question = (text or "").strip()
        if not question:
            raise QuestionError("The question is empty: type what to segment or ask, e.g. 'Segment the dog.'")
        if len(question) > self.max_question_chars:
            raise QuestionError(
                f"The question is {len(question)} characters long, over the limit of {self.max_question_chars}: shorten it."
            )
        return question

    def answer_tokens(self, requested: int | None) -> int:
        """The answer length to use: ``requested``, or the server's limit when None; ``QuestionError`` when out of range."""
        if requested is None:
            return self.max_new_tokens
        if isinstance(requested, bool) or not isinstance(requested, int) or not 1 <= requested <= self.max_new_tokens:
            raise QuestionError(f"max_new_tokens must be a whole number from 1 to {self.max_new_tokens} (this server's limit), got {requested!r}")
        return requested
