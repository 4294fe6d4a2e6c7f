"""A LLaMA-style sentencepiece tokenizer trained locally (no download) for tiny PixelLM models.

It is built like LLaMA's (BPE, byte fallback, dummy prefix, identity normalisation, unk/bos/eos = 0/1/2,
padding with unk) and read back through ``model.tokenization.load_tokenizer``, the path that released
LLaVA and PixelLM folders take, so tiny models tokenise exactly as real ones do.
"""

from __future__ import annotations

import io
import json
import tempfile
from collections.abc import Iterable
from pathlib import Path

import sentencepiece as spm
from transformers.tokenization_utils_tokenizers import TokenizersBackend

from .conversation import SYSTEM_PROMPT
from .tokenization import SENTENCEPIECE_MODEL, TOKENIZER_CONFIG, load_tokenizer
from .tokens import PixelLMTokenIds, add_pixellm_tokens

# Always part of the training text, so the chat scaffolding and common words are single tokens.
BASE_CORPUS = [
    SYSTEM_PROMPT,
    "USER: ASSISTANT:",
    "Sure, it is. Sure, the segmentation result is. They are, separately. and the",
    "Please segment the in this image. Can you segment the? What is in this image? "
    "Please respond with segmentation mask. Please output segmentation mask.",
    "Describe the image. How many are there? What colour is the? There is a. There are no.",
]


def train_tiny_tokenizer(
    corpus: Iterable[str], tokens_per_target: int, vocab_size: int = 1024, model_max_length: int = 2048
) -> tuple[TokenizersBackend, PixelLMTokenIds]:
    """Train the sentencepiece BPE on ``corpus`` (plus the chat scaffolding) and add the PixelLM tokens.

    Any text encodes (byte fallback); words frequent in ``corpus`` become single tokens. ``vocab_size`` is an
    upper bound: a small corpus yields fewer pieces. Returns the tokenizer and the PixelLM token ids.
    """
    lines = [line for line in (*BASE_CORPUS, *corpus) if line.strip()]
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines),
        model_writer=model,
        model_type="bpe",
        vocab_size=vocab_size,
        hard_vocab_limit=False,
        byte_fallback=True,
        character_coverage=1.0,
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        add_dummy_prefix=True,
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        split_digits=True,
        allow_whitespace_only_pieces=True,
        num_threads=1,
        minloglevel=2,
    )
    with tempfile.TemporaryDirectory() as folder:
        (Path(folder) / SENTENCEPIECE_MODEL).write_bytes(model.getvalue())
        config = {"tokenizer_class": "LlamaTokenizer", "legacy": True, "add_bos_token": True, "model_max_length": model_max_length, "padding_side": "right"}
        (Path(folder) / TOKENIZER_CONFIG).write_text(json.dumps(config))
        tokenizer = load_tokenizer(folder)
    tokenizer.pad_token = tokenizer.unk_token
    token_ids = add_pixellm_tokens(tokenizer, tokens_per_target)
    return tokenizer, token_ids
