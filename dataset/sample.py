"""The one sample structure every loader returns.

A ``Sample`` is one image with one or more conversations about it:

- ``image``: [H, W, 3] uint8 RGB, the original image (read with cv2, BGR -> RGB).
- ``processed``: ``model.processing_pixellm.ProcessedImage``: ``pixel_values`` [3, S, S] float32,
  ``clip_resize`` (h', w'), ``original_size`` (H, W).
- ``conversations``: a list of conversations, each a list of ``model.conversation.Turn``. Training
  conversations have an answer in every turn; a generation prompt (MUSE validation) ends with a turn
  whose answer is None.
- ``targets``: per conversation, the names of its targets in the order of their seg groups in the
  answers (for a generation prompt: the ground-truth targets, so ``len`` is the target count).
- ``masks``: [N, H, W] uint8 with N = total number of targets over all conversations, in the order of
  the seg groups over the conversations; values 0/1, 255 = ignore.
- ``source``: the dataset the sample came from (e.g. ``"ade20k"``, ``"refcoco"``, ``"muse_train"``).
- ``inference``: True for validation samples.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from model.conversation import Turn
from model.processing_pixellm import ProcessedImage


@dataclass
class Sample:
    image_path: str
    image: np.ndarray
    processed: ProcessedImage
    conversations: list[list[Turn]]
    targets: list[list[str]]
    masks: np.ndarray
    source: str
    inference: bool = False

    def __post_init__(self) -> None:
        if not self.conversations:
            raise ValueError(f"{self.source}: a sample needs at least one conversation")
        height, width = self.image.shape[:2]
        if self.masks.ndim != 3 or self.masks.shape[1:] != (height, width) or self.masks.dtype != np.uint8:
            raise ValueError(
                f"{self.source}: masks must be uint8 [N, {height}, {width}], got {self.masks.dtype} {self.masks.shape}"
            )
        if len(self.targets) != len(self.conversations):
            raise ValueError(f"{self.source}: {len(self.targets)} target lists for {len(self.conversations)} conversations")
        total = sum(len(t) for t in self.targets)
        if total != self.masks.shape[0]:
            raise ValueError(f"{self.source}: {total} targets but {self.masks.shape[0]} masks")

    @property
    def questions(self) -> list[str]:
        """The first question of each conversation, without the ``<image>`` placeholder."""
        return [conv[0].question.replace("<image>", "").strip() for conv in self.conversations]


def empty_masks(height: int, width: int) -> np.ndarray:
    """[0, H, W] uint8: the masks of a sample without targets."""
    return np.zeros((0, height, width), dtype=np.uint8)
