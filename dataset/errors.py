"""Errors of the data layer: a missing dataset path, and an item that must be skipped."""

from __future__ import annotations

import os


class DatasetNotFoundError(FileNotFoundError):
    """A dataset folder or file is missing; the message names the dataset, the path and what belongs there."""


class SkipItem(Exception):
    """Raised while building a sample from an inconsistent item; the mixture counts it and draws another."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


def require_path(path: str, dataset: str, expected: str) -> str:
    """Return ``path`` if it exists, else raise ``DatasetNotFoundError`` naming dataset, path and contents."""
    if not os.path.exists(path):
        raise DatasetNotFoundError(
            f"Dataset '{dataset}': {path} does not exist. Expected there: {expected}. "
            f"Check --dataset_dir, or drop '{dataset}' from the dataset flags."
        )
    return path
