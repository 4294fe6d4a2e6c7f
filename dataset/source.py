"""What every loader shares: the build context, the source interface and the per-type sampler."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import numpy as np

from model.processing_pixellm import PixelLMImageProcessor
from model.tokens import seg_group_text

from .errors import SkipItem
from .sample import Sample
from .skips import SkipCounter
from .templates import Templates, load_templates

if TYPE_CHECKING:
    from .mix import DataArgs


@dataclass
class DataContext:
    """What every loader needs to build a sample: the processor, K, and the data flags (``dataset.mix.DataArgs``)."""

    processor: PixelLMImageProcessor
    tokens_per_target: int
    args: DataArgs

    def __post_init__(self) -> None:
        if self.args.num_classes_per_sample < 1 or self.args.num_classes_per_question < 1:
            raise ValueError("--num_classes_per_sample and --num_classes_per_question must be >= 1")
        self.templates: Templates = load_templates(self.args.use_expand_question_list)
        self.seg: str = seg_group_text(self.tokens_per_target)

    @property
    def max_targets(self) -> int:
        return self.args.num_classes_per_sample * self.args.num_classes_per_question


class Source(Protocol):
    """One dataset on disk (e.g. ade20k, refcoco): ``build`` raises SkipItem for an unusable item."""

    name: str

    def __len__(self) -> int: ...

    def build(self, index: int, rng: np.random.Generator) -> Sample: ...


class TypeDataset:
    """A data type (sem_seg, refer_seg, ...): picks one of its sources uniformly, then an item uniformly.

    An item that raises SkipItem is counted under its source and another is drawn from the same rng.
    """

    def __init__(self, kind: str, sources: Sequence[Source], counter: SkipCounter, max_attempts: int = 100) -> None:
        empty = [s.name for s in sources if len(s) == 0]
        if empty:
            raise ValueError(f"{kind}: the sources {empty} hold no usable items (check their folders under --dataset_dir)")
        if not sources:
            raise ValueError(f"{kind}: no sources given")
        self.kind = kind
        self.sources = list(sources)
        self.counter = counter
        self.max_attempts = max_attempts

    def sample(self, rng: np.random.Generator) -> Sample:
        reasons: dict[str, int] = {}
        for _ in range(self.max_attempts):
            source = self.sources[int(rng.integers(len(self.sources)))]
            index = int(rng.integers(len(source)))
            try:
                return source.build(index, rng)
            except SkipItem as skip:
                self.counter.record(source.name, skip.reason)
                reasons[skip.reason] = reasons.get(skip.reason, 0) + 1
        raise RuntimeError(
            f"{self.kind}: {self.max_attempts} items in a row were unusable ({reasons}); "
            f"check the data of {[s.name for s in self.sources]}"
        )


def choose(rng: np.random.Generator, items: Sequence, k: int) -> list:
    """``k`` distinct items of ``items`` in random order."""
    order = rng.permutation(len(items))[:k]
    return [items[int(i)] for i in order]


def parse_split_spec(spec: str, expected_name: str) -> list[str]:
    """``"ReasonSeg|train"`` -> ``["train"]`` (several splits may be joined with commas)."""
    name, _, splits = spec.partition("|")
    if name != expected_name or not splits:
        raise ValueError(f"expected '{expected_name}|<split>' (e.g. '{expected_name}|train'), got '{spec}'")
    return [s for s in splits.split(",") if s]
