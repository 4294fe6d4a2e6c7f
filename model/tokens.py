"""Special tokens of PixelLM: the image placeholders and the segmentation codebook.

A target is written in text as one *seg group*: the K = seg_token_num * image_feature_scale_num
codebook tokens ``[SEG0] [SEG1] ... [SEG{K-1}]`` separated by spaces. Token ids are always resolved
with ``convert_tokens_to_ids`` (never by tokenising the string, which can return a whitespace prefix).
"""

from __future__ import annotations

from dataclasses import dataclass

from transformers import AddedToken, PreTrainedTokenizerBase

IMAGE_TOKEN = "<image>"
IM_START_TOKEN = "<im_start>"
IM_END_TOKEN = "<im_end>"


def seg_token_names(tokens_per_target: int) -> list[str]:
    """Names of the K codebook tokens, ``["[SEG0]", ..., "[SEG{K-1}]"]`` (``["[SEG]"]`` when K = 1)."""
    if tokens_per_target < 1:
        raise ValueError(f"tokens_per_target must be >= 1, got {tokens_per_target}")
    if tokens_per_target == 1:
        return ["[SEG]"]
    return [f"[SEG{i}]" for i in range(tokens_per_target)]


def seg_group_text(tokens_per_target: int) -> str:
    """The text of one target: the K codebook tokens joined by spaces."""
    return " ".join(seg_token_names(tokens_per_target))


@dataclass(frozen=True)
class PixelLMTokenIds:
    """Ids of every special token PixelLM needs, as one tokenizer assigns them."""

    image: int
    im_start: int
    im_end: int
    seg: tuple[int, ...]

    @property
    def tokens_per_target(self) -> int:
        return len(self.seg)


def pixellm_added_token(name: str) -> AddedToken:
    """How every PixelLM token is registered: whitespace on both sides is stripped, as the original's slow
    LLaMA tokenizer did for its added tokens. So ``"is [SEG0] [SEG1]. It"`` splits into ``is``, ``[SEG0]``,
    ``[SEG1]``, ``. It``: the state that predicts ``[SEG0]`` is the one of ``is``, and the text after a token
    starts afresh (a LLaMA tokenizer gives it its "▁" prefix), exactly as the released weights saw it."""
    return AddedToken(name, lstrip=True, rstrip=True, normalized=False, special=True)


def add_pixellm_tokens(tokenizer: PreTrainedTokenizerBase, tokens_per_target: int) -> PixelLMTokenIds:
    """Register the seg, ``<im_start>``, ``<im_end>`` and ``<image>`` tokens (in this order, so new ids follow
    the original's: seg tokens first) and return their ids.

    Tokens the tokenizer already holds keep their ids and get the stripping behaviour of
    ``pixellm_added_token``.
    """
    names = [*seg_token_names(tokens_per_target), IM_START_TOKEN, IM_END_TOKEN, IMAGE_TOKEN]
    tokenizer.add_tokens([pixellm_added_token(name) for name in names], special_tokens=True)
    return resolve_token_ids(tokenizer, tokens_per_target)


def resolve_token_ids(tokenizer: PreTrainedTokenizerBase, tokens_per_target: int) -> PixelLMTokenIds:
    """Look up the ids of the PixelLM tokens; raise a clear error if the tokenizer lacks any."""
    names = [IMAGE_TOKEN, IM_START_TOKEN, IM_END_TOKEN, *seg_token_names(tokens_per_target)]
    vocab = tokenizer.get_vocab()
    missing = [n for n in names if n not in vocab]
    if missing:
        raise ValueError(
            f"The tokenizer lacks the PixelLM tokens {missing}. Call model.tokens.add_pixellm_tokens("
            f"tokenizer, {tokens_per_target}) (training does this) or load the tokenizer saved with the model."
        )
    ids = [tokenizer.convert_tokens_to_ids(n) for n in names]
    if len(set(ids)) != len(ids):
        raise ValueError(f"PixelLM tokens {names} resolved to non-distinct ids {ids}")
    return PixelLMTokenIds(image=ids[0], im_start=ids[1], im_end=ids[2], seg=tuple(ids[3:]))
