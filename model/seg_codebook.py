"""The segmentation codebook: find seg groups, gather their predicting hidden states, fuse them per level."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from torch import nn

from .configuration_pixellm import PixelLMConfig

logger = logging.getLogger(__name__)


@dataclass
class SegGroups:
    """Seg groups of a batch of sequences: chunk c of a row is its seg tokens cK ... cK+K-1, whatever they are.

    rows: [N] long, the sequence each target belongs to.
    token_positions: [N, K] long, the positions of a target's K seg tokens.
    well_formed: [N] bool, the chunk is exactly the K codebook tokens in order and adjacent (a chunk that is not
        mixes tokens of different targets: its mask is decoded, but shown by no one).
    counts: [Q] long, targets per sequence.
    """

    rows: torch.Tensor
    token_positions: torch.Tensor
    well_formed: torch.Tensor
    counts: torch.Tensor

    @property
    def num_targets(self) -> int:
        return int(self.rows.numel())

    @property
    def predicting_positions(self) -> torch.Tensor:
        """[N, K]: the position whose hidden state predicts each seg token (the one before it)."""
        return self.token_positions - 1

    def predicting_states(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """hidden_states [Q, T, H] of the sequences the groups were found in -> [N, K, H], the states that predict
        each group's tokens."""
        return hidden_states[self.rows[:, None], self.predicting_positions]

    def of_row(self, row: int) -> list[tuple[list[int], bool]]:
        """(token positions, well formed) of each group of sequence ``row``, in order."""
        mine = (self.rows == row).nonzero()[:, 0].tolist()
        return [(self.token_positions[i].tolist(), bool(self.well_formed[i])) for i in mine]


def find_seg_groups(input_ids: torch.Tensor, seg_token_ids: torch.Tensor, tokens_per_target: int) -> SegGroups:
    """input_ids [Q, T] -> the seg groups: every K consecutive seg tokens of a row, in order.

    A row whose seg-token count is not a multiple of K keeps its whole groups and drops the remainder
    with a warning. This is the one place that decides which tokens form which target.
    """
    seg_token_ids = seg_token_ids.to(input_ids.device)
    is_seg = torch.isin(input_ids, seg_token_ids)
    rows, positions, counts = [], [], []
    for q in range(input_ids.shape[0]):
        pos = torch.nonzero(is_seg[q], as_tuple=False)[:, 0]
        n = pos.numel() // tokens_per_target
        if pos.numel() % tokens_per_target:
            logger.warning(
                "sequence %d has %d seg tokens, not a multiple of K=%d: keeping %d whole groups, dropping the rest",
                q, pos.numel(), tokens_per_target, n,
            )
        positions.append(pos[: n * tokens_per_target].reshape(n, tokens_per_target))
        rows.append(torch.full((n,), q, dtype=torch.long, device=input_ids.device))
        counts.append(n)
    rows_t, positions_t = torch.cat(rows), torch.cat(positions).long()
    tokens = input_ids[rows_t[:, None], positions_t]
    in_order = (tokens == seg_token_ids[None]).all(1)
    adjacent = (positions_t.diff(dim=1) == 1).all(1)
    return SegGroups(
        rows=rows_t,
        token_positions=positions_t,
        well_formed=in_order & adjacent,
        counts=torch.tensor(counts, dtype=torch.long, device=input_ids.device),
    )


class SegCodebook(nn.Module):
    """Maps the K predicting hidden states of each target to one prompt per decoder level.

    ``text_hidden_fcs``: Linear(H->H) - ReLU - Linear(H->D); then, per level l, a weighted sum of the
    states of tokens l*S ... l*S+S-1 (S = seg_token_num). Weights are learnable (init 1/S) or, with
    ``compat_fixed_fusion``, fixed at 1/K as in the original.
    """

    def __init__(self, config: PixelLMConfig) -> None:
        super().__init__()
        hidden = config.text_config.hidden_size
        self.levels, self.per_level = config.image_feature_scale_num, config.seg_token_num
        self.text_hidden_fcs = nn.Sequential(nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, config.out_dim))
        shape = (self.levels, self.per_level)
        if config.compat_fixed_fusion:
            self.register_buffer("token_weights", torch.full(shape, 1.0 / config.tokens_per_target))
        else:
            self.token_weights = nn.Parameter(torch.full(shape, 1.0 / self.per_level))

    def forward(self, states: torch.Tensor) -> torch.Tensor:
        """states: [N, K, H] predicting hidden states -> prompts [N, L, D]."""
        x = self.text_hidden_fcs(states)
        x = x.reshape(x.shape[0], self.levels, self.per_level, -1)
        return (x * self.token_weights[None, :, :, None].to(x.dtype)).sum(dim=2)
