"""Counters of skipped items, shared between the main process and DataLoader workers.

The counts live in a shared-memory array (one slot per (source, reason)), so a worker's skips are
visible to the training loop, which calls ``report_skips`` once per epoch to log and reset them.
"""

from __future__ import annotations

import logging
import multiprocessing
from collections.abc import Callable, Sequence

SKIP_REASONS = (
    "unreadable_image",
    "target_count_mismatch",
    "polygon_out_of_bounds",
    "empty_mask",
    "bad_annotation",
    "bad_conversation",
)

logger = logging.getLogger(__name__)


class SkipCounter:
    """Counts of skipped items per (source, reason), safe across forked or spawned workers."""

    def __init__(self, sources: Sequence[str]) -> None:
        self.sources = tuple(dict.fromkeys(sources))
        self._slot = {
            (s, r): i * len(SKIP_REASONS) + j for i, s in enumerate(self.sources) for j, r in enumerate(SKIP_REASONS)
        }
        self._counts = multiprocessing.get_context().Array("q", max(1, len(self._slot)))

    def record(self, source: str, reason: str, n: int = 1) -> None:
        key = (source, reason)
        if key not in self._slot:
            raise KeyError(f"Unknown skip source/reason {key}; sources {self.sources}, reasons {SKIP_REASONS}")
        with self._counts.get_lock():
            self._counts[self._slot[key]] += n

    def counts(self) -> dict[str, dict[str, int]]:
        """{source: {reason: count}} for the non-zero counts."""
        with self._counts.get_lock():
            values = list(self._counts)
        out: dict[str, dict[str, int]] = {}
        for (source, reason), slot in self._slot.items():
            if values[slot]:
                out.setdefault(source, {})[reason] = values[slot]
        return out

    def reset(self) -> None:
        with self._counts.get_lock():
            for i in range(len(self._counts)):
                self._counts[i] = 0


def format_skips(counts: dict[str, dict[str, int]]) -> str:
    if not counts:
        return "no items skipped"
    parts = [f"{src}: " + ", ".join(f"{r}={n}" for r, n in sorted(rs.items())) for src, rs in sorted(counts.items())]
    return "skipped items: " + "; ".join(parts)


def report_skips(counter: SkipCounter, log: Callable[[str], None] | None = None) -> dict[str, dict[str, int]]:
    """Read the counts, log them in one line, reset them; returns the counts (call once per epoch)."""
    counts = counter.counts()
    (log or logger.info)(format_skips(counts))
    counter.reset()
    return counts
