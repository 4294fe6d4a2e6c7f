"""Make a random tiny PixelLM answer with chosen tokens, so tests can check seg-group handling.

``ForcedAnswers`` hooks the LM head: at each generation step the logits are replaced by a one-hot on the
next token of the script, so ``generate_with_masks`` runs its real path (prefill, KV cache, one hidden
state per token, batched mask decoding) but emits the scripted answer. Each ``generate_with_masks`` call
starts the next script.
"""

from __future__ import annotations

import torch
from transformers import PreTrainedTokenizerBase

from model.tokens import seg_group_text


def answer_ids(tokenizer: PreTrainedTokenizerBase, text: str) -> list[int]:
    """The ids of an answer text (``{S}`` = one seg group of the tokenizer's K), ending with eos.

    Tokenised with a leading space, as model.conversation writes answers: what a trained model emits.
    """
    k = sum(1 for t in tokenizer.get_vocab() if t.startswith("[SEG"))
    return tokenizer(" " + text.replace("{S}", " " + seg_group_text(k)), add_special_tokens=False).input_ids + [tokenizer.eos_token_id]


class ForcedAnswers:
    """Context manager. scripts: one entry per generate call, each a list of token-id lists (one per
    batch row). ``calls`` counts the generate calls seen."""

    def __init__(self, model: torch.nn.Module, scripts: list[list[list[int]]]) -> None:
        self.model = model
        self.scripts = scripts
        self.calls = 0
        self.step = 0
        self._handle = None

    def _hook(self, module: torch.nn.Module, inputs: tuple, logits: torch.Tensor) -> torch.Tensor:
        self.step += 1
        rows = self.scripts[min(self.calls, len(self.scripts)) - 1]
        forced = torch.full_like(logits, -1e4)
        forced[:, :-1] = logits[:, :-1]
        for r, script in enumerate(rows):
            forced[r, -1, script[min(self.step, len(script) - 1)]] = 1e4
        return forced

    def __enter__(self) -> "ForcedAnswers":
        self._handle = self.model.get_output_embeddings().register_forward_hook(self._hook)
        self._patched = vars(self.model).get("generate_with_masks")  # a test's own patch, if any
        self._generate = self.model.generate_with_masks

        def next_script(*args, **kwargs):
            self.calls += 1
            self.step = -1
            return self._generate(*args, **kwargs)

        self.model.generate_with_masks = next_script
        return self

    def __exit__(self, *exc: object) -> None:
        self._handle.remove()
        if self._patched is None:
            del self.model.generate_with_masks
        else:
            self.model.generate_with_masks = self._patched
