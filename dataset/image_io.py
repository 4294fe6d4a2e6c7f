"""Reading training images and decoding COCO-style segmentations into masks.

Training images are trusted local files of the datasets' own formats, read as the original PixelLM read them:
``cv2.imread`` in colour mode (EXIF orientation applied, an alpha channel dropped, 16-bit images scaled to
8 bits), so a model trained here saw what the original saw. Images from users go through ``serving.image_io``
instead: it guards against untrusted files (decompression bombs, byte and pixel limits, refused formats) and
applies the model folder's alpha policy (``PixelLMImageProcessor.alpha``). The two agree on every image without
an alpha channel; the datasets PixelLM trains on (JPEG photos, RGB PNGs) have none.
"""

from __future__ import annotations

import cv2
import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

from .errors import SkipItem

# Annotations on the image border may sit a pixel outside it; farther away means a wrong polygon.
POLYGON_TOLERANCE_PX = 1.0


def read_rgb(path: str) -> np.ndarray:
    """[H, W, 3] uint8 RGB; raises SkipItem('unreadable_image') when cv2 cannot decode ``path``."""
    image = cv2.imread(path, cv2.IMREAD_COLOR)
    if image is None:
        raise SkipItem("unreadable_image", path)
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def read_label(path: str) -> np.ndarray:
    """A label map [H, W] as stored (palette PNGs give their indices); raises SkipItem when unreadable."""
    try:
        with Image.open(path) as img:
            label = np.array(img)
    except (OSError, ValueError) as err:
        raise SkipItem("unreadable_image", f"{path}: {err}") from err
    if label.ndim == 3:
        label = label[..., 0]
    return label


def check_polygons(polygons: list[list[float]], height: int, width: int) -> None:
    """Raise SkipItem('polygon_out_of_bounds' / 'bad_annotation') for unusable polygons."""
    if not polygons:
        raise SkipItem("bad_annotation", "empty polygon list")
    for poly in polygons:
        if len(poly) < 6 or len(poly) % 2:
            raise SkipItem("bad_annotation", f"polygon with {len(poly)} coordinates")
        xy = np.asarray(poly, dtype=np.float64).reshape(-1, 2)
        if not np.isfinite(xy).all():
            raise SkipItem("bad_annotation", "non-finite polygon coordinate")
        t = POLYGON_TOLERANCE_PX
        if xy[:, 0].min() < -t or xy[:, 1].min() < -t or xy[:, 0].max() > width + t or xy[:, 1].max() > height + t:
            raise SkipItem("polygon_out_of_bounds", f"polygon outside the {width}x{height} image")


def decode_segmentation(segmentation, height: int, width: int) -> np.ndarray:
    """A COCO segmentation (polygon list, RLE or uncompressed RLE) -> [H, W] uint8 {0, 1}."""
    if isinstance(segmentation, list):
        check_polygons(segmentation, height, width)
        rles = mask_utils.frPyObjects(segmentation, height, width)
        rle = mask_utils.merge(rles)
    elif isinstance(segmentation, dict) and "counts" in segmentation:
        if list(segmentation.get("size", [height, width])) != [height, width]:
            raise SkipItem("bad_annotation", f"RLE size {segmentation.get('size')} != image {height}x{width}")
        rle = mask_utils.frPyObjects(segmentation, height, width) if isinstance(segmentation["counts"], list) else segmentation
    else:
        raise SkipItem("bad_annotation", f"unknown segmentation type {type(segmentation).__name__}")
    return mask_utils.decode(rle).astype(np.uint8)


def union_mask(segmentations: list, height: int, width: int) -> np.ndarray:
    """The union of several segmentations as [H, W] uint8 {0, 1} (never a sum above 1)."""
    out = np.zeros((height, width), dtype=np.uint8)
    for seg in segmentations:
        out |= decode_segmentation(seg, height, width)
    return out


def check_image_size(image: np.ndarray, height: int, width: int, path: str) -> None:
    if image.shape[:2] != (height, width):
        raise SkipItem("bad_annotation", f"{path} is {image.shape[1]}x{image.shape[0]}, annotation says {width}x{height}")
