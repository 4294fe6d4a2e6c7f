"""A byte-level BPE tokenizer trained locally (no download) for tiny PixelLM models."""

from __future__ import annotations

from collections.abc import Iterable

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from .conversation import SYSTEM_PROMPT
from .tokens import PixelLMTokenIds, add_pixellm_tokens

BASE_SPECIAL_TOKENS = ["<unk>", "<s>", "</s>", "<pad>"]

# Always part of the training text, so the chat scaffolding and common words are single tokens.
BASE_CORPUS = [
    SYSTEM_PROMPT,
    " USER: ASSISTANT:",
    "Sure, it is. Sure, the segmentation result is. They are, separately. and the",
    "Please segment the in this image. Can you segment the? What is in this image? "
    "Please respond with segmentation mask. Please output segmentation mask.",
    "Describe the image. How many are there? What colour is the? There is a. There are no.",
]


def train_tiny_tokenizer(
    corpus: Iterable[str], num_seg_tokens: int, vocab_size: int = 1024, model_max_length: int = 2048
) -> tuple[PreTrainedTokenizerFast, PixelLMTokenIds]:
    """Train a byte-level BPE on ``corpus`` (plus the chat scaffolding) and add the PixelLM tokens.

    Any text encodes (byte fallback); words frequent in ``corpus`` become single tokens.
    Returns the tokenizer (loadable with ``AutoTokenizer`` once saved) and the PixelLM token ids.
    """
    bpe = Tokenizer(models.BPE(unk_token="<unk>"))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=BASE_SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator([*BASE_CORPUS, *corpus], trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        padding_side="right",
        model_max_length=model_max_length,
    )
    token_ids = add_pixellm_tokens(tokenizer, num_seg_tokens)
    return tokenizer, token_ids
