"""The decoding rule that keeps an answer from naming the same target twice (model/target_repeat_ban.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from model import PixelLMConfig, PixelLMForCausalLM, PixelLMImageProcessor
from model.conversation import Turn, tokenize_conversation
from model.target_repeat_ban import TargetRepeatBan
from model.tiny import build_tiny
from model.tokenization import load_tokenizer
from model.tokens import resolve_token_ids, seg_group_text

SEG = [100, 101, 102]
VOCAB = 110


def step(ban: TargetRepeatBan, *rows: list[int]) -> None:
    """Feed the rows' tokens one step at a time (rows of equal length)."""
    for column in zip(*rows):
        ban.record(torch.tensor(column))


def banned_tokens(ban: TargetRepeatBan) -> list[list[int]]:
    logits = ban.apply(torch.zeros(len(ban.history), VOCAB))
    return [torch.nonzero(torch.isinf(row))[:, 0].tolist() for row in logits]


def test_bans_the_token_that_completes_a_name_already_followed_by_a_group():
    ban = TargetRepeatBan(3, SEG, rows=2)
    # row 0: "sure the red circle [SEG] , the red"; row 1: the same words, no group yet
    step(ban, [1, 5, 6, 7, *SEG, 9, 5, 6], [1, 5, 6, 7, 8, 8, 8, 9, 5, 6])
    assert banned_tokens(ban) == [[7], []]
    step(ban, [8], [8])  # row 0 names another target: nothing banned any more
    assert banned_tokens(ban) == [[], []]


def test_names_only_from_text_not_from_seg_tokens_or_a_short_start():
    ban = TargetRepeatBan(3, SEG, rows=1)
    step(ban, [5, *SEG, *SEG])  # a group after one token, then a group right after a group
    assert ban.names == [set()]
    step(ban, [5, 6, 7, *SEG, 5, 6])
    assert ban.names == [{(5, 6, 7)}] and banned_tokens(ban) == [[7]]


def test_size_one_bans_the_last_token_of_every_name_anywhere():
    ban = TargetRepeatBan(1, SEG, rows=1)
    step(ban, [5, 6, *SEG, 9, 4, *SEG])
    assert banned_tokens(ban) == [[4, 6]]
    with pytest.raises(ValueError, match="at least 1 token"):
        TargetRepeatBan(0, SEG, rows=1)
    with pytest.raises(ValueError, match="no_repeat_target_ngram_size must be >= 0"):
        PixelLMConfig(no_repeat_target_ngram_size=-1)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    folder = build_tiny(tmp_path_factory.mktemp("tiny"), seed=0, corpus=["the red circle and the red star"], no_repeat_target_ngram_size=3)
    model = PixelLMForCausalLM.from_pretrained(folder).eval()
    tokenizer = load_tokenizer(folder)
    return model, tokenizer, PixelLMImageProcessor.from_pretrained(folder), resolve_token_ids(tokenizer, model.config.tokens_per_target)


def test_generation_names_another_target_instead_of_repeating_one(tiny):
    """A head whose first choice repeats "the red circle" and whose second is "star": with the rule on, the
    second target is the red star, with a mask of its own; with it off, the repeat. The model folder carries the rule."""
    model, tokenizer, processor, ids = tiny
    s = seg_group_text(model.config.tokens_per_target)
    script = tokenizer(f" the red circle {s} and the red circle {s}.", add_special_tokens=False).input_ids + [tokenizer.eos_token_id]
    circle, star = (tokenizer(f" the red {kind}", add_special_tokens=False).input_ids[-1] for kind in ("circle", "star"))
    second_circle = [i for i, token in enumerate(script) if token == circle][1]
    expected = script[:second_circle] + [star] + script[second_circle + 1:]
    batch = processor([np.random.default_rng(0).integers(0, 255, (60, 80, 3), dtype=np.uint8)])
    prompt = tokenize_conversation(tokenizer, [Turn("<image>\nSegment the red shapes.")], ids, model.config.num_image_tokens)
    original_head = model.get_output_embeddings()

    class PreferenceHead(torch.nn.Module):
        """First choice: the script's next token; second choice: "star"."""

        def __init__(self) -> None:
            super().__init__()
            self.tokens = iter(script)

        def forward(self, hidden: torch.Tensor) -> torch.Tensor:
            logits = torch.full((*hidden.shape[:-1], original_head.out_features), -1e4)
            logits[..., star] = -1.0
            logits[..., next(self.tokens)] = 0.0
            return logits

    def generate(**options) -> tuple[list[int], int]:
        model.set_output_embeddings(PreferenceHead())
        try:
            out = model.generate_with_masks(input_ids=torch.tensor([prompt.input_ids]), max_new_tokens=len(script),
                                            **{k: batch[k] for k in ("pixel_values", "clip_resize", "original_sizes")}, **options)
        finally:
            model.set_output_embeddings(original_head)
        return out.sequences[0], out.pred_masks[0].shape[0]

    assert model.config.no_repeat_target_ngram_size == 3
    assert generate() == generate(use_cache=False) == (expected, 2)
    assert generate(no_repeat_target_ngram_size=0) == (script, 2)
    assert generate(no_repeat_target_ngram_size=4) == (script, 2)  # the first name has only 3 tokens: nothing to repeat
    assert PixelLMConfig().no_repeat_target_ngram_size == 0  # off unless a model folder asks: released weights decode as the original
