"""The llava_v1 chat template and its tokenisation with exact answer labels.

Text form of one conversation (``</s>`` is the tokenizer's eos)::

    {system} USER: <image>\\n{q1} ASSISTANT: {a1}</s>USER: {q2} ASSISTANT: {a2}</s>

In token form the single ``<image>`` becomes ``<im_start>``, ``num_image_tokens`` copies of the
``<image>`` id (the model writes the projected image features there) and ``<im_end>``. Each piece is
tokenised on its own and concatenated, so the boundary between question and answer is exact and
training and inference tokenise a prompt identically.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from transformers import PreTrainedTokenizerBase

from .tokens import IMAGE_TOKEN, PixelLMTokenIds

SYSTEM_PROMPT = (
    "A chat between a curious human and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the human's questions."
)
IGNORE_INDEX = -100


@dataclass
class Turn:
    """One exchange. ``answer`` is None for the last turn of an inference prompt."""

    question: str
    answer: str | None = None


@dataclass
class TokenizedConversation:
    """``input_ids`` and ``labels`` (IGNORE_INDEX outside the answers), both of length T."""

    input_ids: list[int] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)

    def extend(self, ids: list[int], supervised: bool) -> None:
        self.input_ids.extend(ids)
        self.labels.extend(ids if supervised else [IGNORE_INDEX] * len(ids))


def conversation_text(turns: list[Turn], system: str = SYSTEM_PROMPT) -> str:
    """The plain-text form of a conversation (for logs and for the original's tooling)."""
    parts = [system]
    for i, turn in enumerate(turns):
        parts.append(f"{' ' if i == 0 else ''}USER: {turn.question} ASSISTANT:")
        if turn.answer is not None:
            parts.append(f" {turn.answer}</s>")
    return "".join(parts)


def tokenize_conversation(
    tokenizer: PreTrainedTokenizerBase,
    turns: list[Turn],
    token_ids: PixelLMTokenIds,
    num_image_tokens: int,
    system: str = SYSTEM_PROMPT,
) -> TokenizedConversation:
    """Tokenise a conversation; only the answers (and their eos) are supervised.

    The first question may contain ``<image>`` (at most one per conversation); it is replaced by
    ``<im_start>`` + ``num_image_tokens`` image ids + ``<im_end>``. A conversation whose last answer
    is None ends with ``" ASSISTANT:"``: the prompt for generation.
    """
    if not turns:
        raise ValueError("A conversation needs at least one turn")
    out = TokenizedConversation()

    def text(s: str) -> list[int]:
        return tokenizer(s, add_special_tokens=False).input_ids if s else []

    if tokenizer.bos_token_id is not None:
        out.extend([tokenizer.bos_token_id], supervised=False)
    # Unsupervised text is buffered and tokenised in one piece; only the answer boundaries must be exact.
    pending = system
    for i, turn in enumerate(turns):
        question = turn.question
        if IMAGE_TOKEN in question and (i > 0 or question.count(IMAGE_TOKEN) > 1):
            raise ValueError("Only the first question may hold the <image> placeholder, once")
        user = " USER:" if i == 0 else "USER:"
        if IMAGE_TOKEN in question:
            before, after = question.split(IMAGE_TOKEN)
            pending += user + (f" {before.strip()}" if before.strip() else "")
            out.extend(text(pending), supervised=False)
            out.extend([token_ids.im_start] + [token_ids.image] * num_image_tokens + [token_ids.im_end], supervised=False)
            # The original's tokenizer dropped whitespace next to added tokens, so "<image>\n" carries no newline.
            pending = after.lstrip("\n") + " ASSISTANT:"
        else:
            pending += f"{user} {question} ASSISTANT:"
        if turn.answer is None:
            if i != len(turns) - 1:
                raise ValueError("Only the last turn may lack an answer")
            break
        out.extend(text(pending), supervised=False)
        out.extend(text(" " + turn.answer) + [tokenizer.eos_token_id], supervised=True)
        pending = ""
    if pending:
        out.extend(text(pending), supervised=False)
    return out


def left_padded(prompts: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Prompts of any lengths -> (input_ids [Q, T], attention_mask [Q, T]) left-padded with ``pad_id``, the layout
    generation needs (every prompt ends at the last column, where the answer is appended)."""
    length = max(len(p) for p in prompts)
    input_ids = torch.full((len(prompts), length), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(prompts), length), dtype=torch.long)
    for row, ids in enumerate(prompts):
        input_ids[row, length - len(ids) :] = torch.tensor(ids, dtype=torch.long)
        attention_mask[row, length - len(ids) :] = 1
    return input_ids, attention_mask
