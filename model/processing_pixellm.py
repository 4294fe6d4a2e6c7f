"""Image pre- and post-processing for PixelLM (kept out of the model, as in transformers' processors).

Pre-processing: resize the longest side to ``image_size`` (Pillow's bilinear filter, antialiased when
shrinking, its two passes in Pillow 13's order whatever Pillow is installed: ``resize_bilinear``), normalise,
zero-pad bottom/right to ``image_size`` x ``image_size``; the size before padding is ``clip_resize`` = (h', w'). Post-processing inverts it for mask logits: upsample to the padded square,
crop ``clip_resize``, resize to the original image size.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

PREPROCESSOR_FILE = "preprocessor_config.json"
CLIP_MEAN = (0.48145466 * 255, 0.4578275 * 255, 0.40821073 * 255)
CLIP_STD = (0.26862954 * 255, 0.26130258 * 255, 0.27577711 * 255)
# The original PixelLM normalised its padded CLIP input with SAM/ImageNet statistics (compat).
SAM_MEAN = (123.675, 116.28, 103.53)
SAM_STD = (58.395, 57.12, 57.375)


ALPHA_MODES = ("white", "drop")


def resize_bilinear(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """[H, W, C] uint8 -> [h, w, C] uint8 with Pillow's bilinear filter (antialiased when shrinking).

    Pillow resamples in two passes, one per axis, rounding to uint8 in between, so the pass order changes
    some pixels by one grey level. Pillow 13 runs the vertical pass first when the height shrinks by more
    than twice as many pixels as the width; earlier versions always run the horizontal pass first. The
    passes are run here one at a time in Pillow 13's order, which gives Pillow 13's result bit for bit
    with any Pillow that has the same one-axis filter (8.0 and later).
    """
    height, width = image.shape[:2]
    new_h, new_w = int(size[0]), int(size[1])
    vertical_first = height - new_h > 0 and height - new_h > 2 * (width - new_w)
    first = (width, new_h) if vertical_first else (new_w, height)
    resized = Image.fromarray(image).resize(first, Image.BILINEAR).resize((new_w, new_h), Image.BILINEAR)
    return np.asarray(resized, dtype=np.uint8)


def postprocess_masks(
    logits: torch.Tensor, image_size: int, clip_resize: tuple[int, int], original_size: tuple[int, int]
) -> torch.Tensor:
    """Mask logits [N, h, w] -> [N, H, W]: bilinear to the padded square, crop ``clip_resize``, bilinear to ``original_size``."""
    height, width = int(original_size[0]), int(original_size[1])
    if logits.shape[0] == 0:
        return logits.new_zeros((0, height, width))
    x = F.interpolate(logits[:, None].float(), (image_size, image_size), mode="bilinear", align_corners=False)
    x = x[..., : int(clip_resize[0]), : int(clip_resize[1])]
    x = F.interpolate(x, (height, width), mode="bilinear", align_corners=False)
    return x[:, 0]


@dataclass
class ProcessedImage:
    """One image ready for the model.

    pixel_values: [3, S, S] float32, normalised and zero-padded.
    clip_resize: (h', w'), the resized size before padding.
    original_size: (H, W) of the input image.
    """

    pixel_values: torch.Tensor
    clip_resize: tuple[int, int]
    original_size: tuple[int, int]


@dataclass
class PixelLMImageProcessor:
    """Resize-longest-side, normalise and pad; and the inverse for mask logits.

    ``image_mean``/``image_std`` are in 0-255 pixel units. ``alpha`` says how the model's images are read
    when they have an alpha channel (``serving.image_io``): "white" composites onto white, "drop" keeps the
    stored colours, as the original PixelLM (``cv2.imread``) did.
    """

    image_size: int = 448
    image_mean: tuple[float, ...] = field(default=CLIP_MEAN)
    image_std: tuple[float, ...] = field(default=CLIP_STD)
    alpha: str = "white"

    def __post_init__(self) -> None:
        if self.alpha not in ALPHA_MODES:
            raise ValueError(f"preprocessor_config.json: alpha must be one of {ALPHA_MODES}, got {self.alpha!r}")

    def resized_size(self, height: int, width: int) -> tuple[int, int]:
        """(h', w') after resizing the longest side to ``image_size``."""
        scale = self.image_size / max(height, width)
        return max(1, int(height * scale + 0.5)), max(1, int(width * scale + 0.5))

    def resize(self, image: np.ndarray) -> np.ndarray:
        """[H, W, 3] uint8 RGB -> [h', w', 3] uint8, the longest side resized to ``image_size``."""
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"expected an RGB uint8 image of shape [H, W, 3], got {image.dtype} {image.shape}")
        return resize_bilinear(image, self.resized_size(*image.shape[:2]))

    def preprocess(self, image: np.ndarray) -> ProcessedImage:
        """``image``: [H, W, 3] uint8 RGB -> ``ProcessedImage``."""
        resized = self.resize(image).astype(np.float32)
        height, width = image.shape[:2]
        new_h, new_w = resized.shape[:2]
        mean = np.asarray(self.image_mean, dtype=np.float32)
        std = np.asarray(self.image_std, dtype=np.float32)
        normalised = (resized - mean) / std
        padded = np.zeros((self.image_size, self.image_size, 3), dtype=np.float32)
        padded[:new_h, :new_w] = normalised
        return ProcessedImage(
            pixel_values=torch.from_numpy(padded).permute(2, 0, 1).contiguous(),
            clip_resize=(new_h, new_w),
            original_size=(height, width),
        )

    def __call__(self, images: list[np.ndarray]) -> dict[str, torch.Tensor]:
        """A batch: ``pixel_values`` [B, 3, S, S], ``clip_resize`` and ``original_sizes`` [B, 2] long."""
        processed = [self.preprocess(image) for image in images]
        return {
            "pixel_values": torch.stack([p.pixel_values for p in processed]),
            "clip_resize": torch.tensor([p.clip_resize for p in processed], dtype=torch.long),
            "original_sizes": torch.tensor([p.original_size for p in processed], dtype=torch.long),
        }

    def postprocess_masks(self, logits: torch.Tensor, clip_resize: tuple[int, int], original_size: tuple[int, int]) -> torch.Tensor:
        """Mask logits [N, h, w] at decoder resolution -> logits [N, H, W] at the original size."""
        return postprocess_masks(logits, self.image_size, clip_resize, original_size)

    def to_dict(self) -> dict:
        return {"processor_class": type(self).__name__, **{k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}}

    def save_pretrained(self, save_directory: str | os.PathLike) -> None:
        os.makedirs(save_directory, exist_ok=True)
        with open(os.path.join(save_directory, PREPROCESSOR_FILE), "w") as f:
            json.dump(self.to_dict(), f, indent=2)

    @classmethod
    def from_dict(cls, data: dict) -> "PixelLMImageProcessor":
        known = {"image_size", "image_mean", "image_std", "alpha"}
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items() if k in known})

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike) -> "PixelLMImageProcessor":
        """Load from a model folder (its ``preprocessor_config.json``) or from a JSON file."""
        file = path if os.path.isfile(path) else os.path.join(path, PREPROCESSOR_FILE)
        if not os.path.isfile(file):
            raise FileNotFoundError(f"No {PREPROCESSOR_FILE} at {path}: a PixelLM model folder holds one (see configs/preprocessor_448.json)")
        with open(file) as f:
            return cls.from_dict(json.load(f))
