"""Load a model folder's tokenizer so that it splits text exactly as the model was trained with.

Two kinds of folders exist:

* **LLaMA sentencepiece** (``tokenizer.model`` with ``tokenizer_class`` "LlamaTokenizer"): the original
  LLaVA and PixelLM releases, trained with transformers' slow LLaMA tokenizer. That tokenizer gives every
  piece of text between added tokens a fresh "▁" (sentencepiece's dummy prefix) unless
  ``tokenizer_config.json`` says ``"legacy": false``; older folders have no ``legacy`` key and got the
  prefix. Transformers 5 has no slow LLaMA tokenizer and its ``AutoTokenizer`` picks a generic converter for
  ``model_type: llava`` folders that never adds the prefix, so these folders are read with
  ``LlamaTokenizer`` and the ``legacy`` value of the folder (default true).
* **tokenizers JSON** (``tokenizer.json``): read verbatim, pipeline included (llava-hf folders, ours).

Either way the result is a plain ``TokenizersBackend`` whose whole pipeline lives in ``tokenizer.json``, so
``save_pretrained`` writes a folder that reloads with the same behaviour (a ``LlamaTokenizer`` saved as such
would be rebuilt on reload from its class defaults, losing the legacy prefix).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from transformers import LlamaTokenizer, PreTrainedTokenizerBase
from transformers.tokenization_utils_tokenizers import TokenizersBackend

TOKENIZER_CONFIG = "tokenizer_config.json"
SENTENCEPIECE_MODEL = "tokenizer.model"
TOKENIZER_JSON = "tokenizer.json"
# tokenizer_class values of folders trained with the slow (sentencepiece) LLaMA tokenizer.
SENTENCEPIECE_LLAMA_CLASSES = ("LlamaTokenizer", "CodeLlamaTokenizer")
# The slow LLaMA tokenizer's default when tokenizer_config.json has no "legacy" key (transformers <= 4.31).
LEGACY_DEFAULT = True


def read_tokenizer_config(folder: str | os.PathLike) -> dict:
    """``folder/tokenizer_config.json`` as a dict ({} when absent)."""
    path = Path(folder) / TOKENIZER_CONFIG
    if not path.is_file():
        return {}
    with open(path) as f:
        return json.load(f)


def is_sentencepiece_llama(folder: str | os.PathLike) -> bool:
    """True for a folder whose tokenizer is the slow LLaMA sentencepiece one (``tokenizer.model``)."""
    folder = Path(folder)
    if not (folder / SENTENCEPIECE_MODEL).is_file():
        return False
    cls = read_tokenizer_config(folder).get("tokenizer_class")
    return cls in SENTENCEPIECE_LLAMA_CLASSES or (cls is None and not (folder / TOKENIZER_JSON).is_file())


def load_tokenizer(folder: str | os.PathLike) -> TokenizersBackend:
    """The tokenizer of a model folder, splitting text as the model's training did (see the module docstring).

    Raises ValueError naming the folder when it holds no tokenizer files or they cannot be read.
    """
    folder = Path(folder)
    try:
        if is_sentencepiece_llama(folder):
            legacy = read_tokenizer_config(folder).get("legacy", LEGACY_DEFAULT)
            return portable(LlamaTokenizer.from_pretrained(str(folder), legacy=bool(legacy)))
        if (folder / TOKENIZER_JSON).is_file():
            return TokenizersBackend.from_pretrained(str(folder))
    except (ImportError, ValueError, OSError) as err:
        raise ValueError(
            f"could not read the tokenizer in {folder}: {err}. A LLaMA tokenizer.model needs the sentencepiece and "
            "protobuf packages (pip install -r requirements.txt)"
        ) from err
    raise ValueError(
        f"no tokenizer in {folder}: expected {TOKENIZER_JSON} (a tokenizers pipeline) or {SENTENCEPIECE_MODEL} with "
        f"{TOKENIZER_CONFIG} naming LlamaTokenizer (a LLaMA sentencepiece model)"
    )


def portable(tokenizer: PreTrainedTokenizerBase) -> TokenizersBackend:
    """The same tokenizer as a plain ``TokenizersBackend``: its pipeline, special tokens and limits, nothing that a
    tokenizer class would rebuild on reload."""
    if type(tokenizer) is TokenizersBackend:
        return tokenizer
    special = {
        name: getattr(tokenizer, name)
        for name in ("bos_token", "eos_token", "unk_token", "pad_token")
        if getattr(tokenizer, name) is not None
    }
    return TokenizersBackend(
        tokenizer_object=tokenizer.backend_tokenizer,
        model_max_length=tokenizer.model_max_length,
        padding_side=tokenizer.padding_side,
        clean_up_tokenization_spaces=tokenizer.clean_up_tokenization_spaces,
        **special,
    )


__all__ = ["is_sentencepiece_llama", "load_tokenizer", "portable", "read_tokenizer_config"]
