"""A decoding rule for greedy generation: an answer does not name the same target twice.

A small LLM listing several targets tends to repeat one ("the green circle, the green circle and the green
circle"): the repeat gets a second, identical mask and takes the place of a target it did not name. The rule
works on tokens, like ``no_repeat_ngram_size`` in Hugging Face generation, but only on target names: the
``size`` tokens right before a seg group are that target's name, and once a row has named it, the token
that would complete the same name again is banned, so the model names another target or ends its list.
"""

from __future__ import annotations

from collections import deque

import torch


class TargetRepeatBan:
    """Per-row memory of the target names generated so far, and the logits mask that keeps them from repeating.

    size: tokens of a name (the n of the n-gram; >= 1); seg_token_ids: the K tokens of a seg group, in order.
    """

    def __init__(self, size: int, seg_token_ids: list[int], rows: int) -> None:
        if size < 1:
            raise ValueError(f"a target name is at least 1 token long, got size {size}")
        self.size, self.group_start, self.seg = size, seg_token_ids[0], set(seg_token_ids)
        self.history: list[deque[int]] = [deque(maxlen=size) for _ in range(rows)]  # the last `size` tokens of each row
        self.names: list[set[tuple[int, ...]]] = [set() for _ in range(rows)]

    def record(self, tokens: torch.Tensor) -> None:
        """tokens [Q]: the token each row generated this step. A group start closes the name before it."""
        for row, token in enumerate(tokens.tolist()):
            history = self.history[row]
            name = tuple(history)
            if token == self.group_start and len(name) == self.size and not self.seg.intersection(name):
                self.names[row].add(name)
            history.append(token)

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        """logits [Q, V] -> a copy with -inf at every token that would repeat a name of its row."""
        banned = []
        for row, (names, history) in enumerate(zip(self.names, self.history)):
            # A name is recorded only after `size` tokens and a group start, so a row with names has a full history.
            start = tuple(history)[1:]
            banned += [(row, name[-1]) for name in names if start == name[:-1]]
        if not banned:
            return logits
        logits = logits.clone()
        rows, tokens = zip(*banned)
        logits[list(rows), list(tokens)] = float("-inf")
        return logits
