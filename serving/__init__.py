"""Serving: robust image loading, lossless mask export (PNG, COCO RLE JSON) and overlays."""

from .export import ExportTarget, answer_record, load_masks_from_json, mask_bbox, mask_to_rle, rle_to_mask, save_answer
from .image_io import ImageLoadConfig, ImageLoadError, check_image_limits, load_image, require_rgb_image
from .overlay import PALETTE_HEX, OverlayStyle, as_bool_mask, draw_overlay, target_color, target_color_hex

__all__ = [
    "ExportTarget",
    "ImageLoadConfig",
    "ImageLoadError",
    "OverlayStyle",
    "PALETTE_HEX",
    "answer_record",
    "as_bool_mask",
    "check_image_limits",
    "draw_overlay",
    "load_image",
    "load_masks_from_json",
    "mask_bbox",
    "mask_to_rle",
    "require_rgb_image",
    "rle_to_mask",
    "save_answer",
    "target_color",
    "target_color_hex",
]
