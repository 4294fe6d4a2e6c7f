"""Stream each answer's display text while ``generate_with_masks`` runs, one callback per prompt.

``AnswerTextStreamer`` is the ``streamer`` of a batched generation call: at every step it receives one
token per prompt, decodes each prompt's answer so far (seg tokens and eos left out, as
``serving.answer_parsing.parse_answer`` does) and hands the callback of that prompt the new part of
``settled_display_text``: text that later tokens cannot change. When the answers are parsed, ``finish``
hands over the rest, so the chunks a callback received always add up to ``Answer.text``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import torch
from transformers import PreTrainedTokenizerBase
from transformers.generation.streamers import BaseStreamer

from .answer_parsing import settled_display_text

logger = logging.getLogger(__name__)

TextCallback = Callable[[str], None]


class _PromptText:
    """The display text of one prompt's answer, as far as it is settled."""

    def __init__(self, callback: TextCallback | None, budget: int) -> None:
        self.callback = callback
        self.budget = budget
        self.plain: list[int] = []
        self.generated = 0
        self.done = False
        self.sent = ""

    def send(self, text: str) -> None:
        """Hand ``text`` (the settled text so far) to the callback if it extends what was sent."""
        if self.callback is None or len(text) <= len(self.sent) or not text.startswith(self.sent):
            return
        chunk, self.sent = text[len(self.sent) :], text
        try:
            self.callback(chunk)
        except Exception:  # a broken consumer must not stop the other prompts of the batch
            logger.exception("a text callback failed; no more text goes to it")
            self.callback = None


class AnswerTextStreamer(BaseStreamer):
    """The streamer of one ``generate_with_masks`` call over Q prompts.

    callbacks: one per prompt (None: that prompt is not streamed). budgets: each prompt's
    ``max_new_tokens``, after which its row only repeats eos.
    """

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        seg_token_ids: Sequence[int],
        eos_token_id: int,
        callbacks: Sequence[TextCallback | None],
        budgets: Sequence[int],
    ) -> None:
        if len(callbacks) != len(budgets):
            raise ValueError(f"one callback and one budget per prompt, got {len(callbacks)} and {len(budgets)}")
        self.tokenizer = tokenizer
        self.seg = set(seg_token_ids)
        self.eos = eos_token_id
        self.prompts = [_PromptText(c, b) for c, b in zip(callbacks, budgets)]

    def put(self, value: torch.Tensor) -> None:
        """value: [Q] the token each prompt got at this step."""
        for prompt, token in zip(self.prompts, value.reshape(-1).tolist()):
            if prompt.done or prompt.callback is None:
                continue
            prompt.generated += 1
            prompt.done = token == self.eos or prompt.generated >= prompt.budget
            if token == self.eos or token in self.seg:
                continue
            prompt.plain.append(token)
            prompt.send(settled_display_text(self.tokenizer.decode(prompt.plain, skip_special_tokens=True)))

    def end(self) -> None:
        """Generation ended; the rest of each text comes with ``finish``."""

    def finish(self, texts: Sequence[str]) -> None:
        """Send each prompt the rest of its final display text (``Answer.text``)."""
        for prompt, text in zip(self.prompts, texts):
            if prompt.callback is not None and not text.startswith(prompt.sent):
                logger.error("streamed text %r is not a prefix of the answer %r", prompt.sent, text)
            prompt.send(text)
