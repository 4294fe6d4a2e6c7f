"""Mask overlays: a fixed colour-blind-friendly palette, tinted masks with contours, and a legend.

The palette is Okabe & Ito's seven chromatic colours (chosen to stay distinguishable under the common
colour-vision deficiencies) followed by three darker/purple colours (from Paul Tol's muted scheme and
IBM's design palette) that keep the smallest pairwise CIELAB distance of the set under simulated
deuteranopia, protanopia and tritanopia unchanged. Targets beyond the tenth reuse colours in order; the
legend's index tells them apart.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .image_io import require_rgb_image

PALETTE_HEX: tuple[str, ...] = (
    "#E69F00",  # orange
    "#56B4E9",  # sky blue
    "#009E73",  # bluish green
    "#F0E442",  # yellow
    "#0072B2",  # blue
    "#D55E00",  # vermillion
    "#CC79A7",  # reddish purple
    "#332288",  # indigo
    "#882255",  # wine
    "#785EF0",  # violet
)


def target_color_hex(j: int) -> str:
    """The colour of target ``j`` (0-based, answer order) as '#RRGGBB'."""
    if j < 0:
        raise ValueError(f"target index must be >= 0, got {j}")
    return PALETTE_HEX[j % len(PALETTE_HEX)]


def target_color(j: int) -> tuple[int, int, int]:
    """The colour of target ``j`` (0-based, answer order) as an (r, g, b) tuple of ints in 0..255."""
    hex_colour = target_color_hex(j)
    return int(hex_colour[1:3], 16), int(hex_colour[3:5], 16), int(hex_colour[5:7], 16)


@dataclass(frozen=True)
class OverlayStyle:
    """How overlays are drawn.

    alpha: opacity of the tint inside a mask (0 = none, 1 = solid colour).
    contour_px: contour thickness in pixels; None scales it with the image (about 1/250 of the shorter side).
    legend: add a legend panel below the image (the canvas grows; the image is never covered).
    font_px: legend font size; None scales it with the image width (12..48 px).
    max_phrase_chars: longer phrases are cut with an ellipsis in the legend.
    """

    alpha: float = 0.5
    contour_px: int | None = None
    legend: bool = True
    font_px: int | None = None
    max_phrase_chars: int = 60

    def __post_init__(self) -> None:
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"OverlayStyle.alpha must lie in [0, 1], got {self.alpha}")
        if self.contour_px is not None and self.contour_px < 0:
            raise ValueError(f"OverlayStyle.contour_px must be >= 0 or None, got {self.contour_px}")
        if self.font_px is not None and self.font_px <= 0:
            raise ValueError(f"OverlayStyle.font_px must be positive or None, got {self.font_px}")
        if self.max_phrase_chars < 4:
            raise ValueError(f"OverlayStyle.max_phrase_chars must be >= 4, got {self.max_phrase_chars}")


def draw_overlay(
    image_rgb: np.ndarray,
    masks: list[np.ndarray],
    phrases: list[str],
    style: OverlayStyle | None = None,
) -> np.ndarray:
    """Tint each mask with its target colour, outline it, and add a legend below the image.

    image_rgb: [H, W, 3] uint8 RGB. masks: N arrays [H, W] of bool (or 0/1), in answer order; later
    targets are drawn over earlier ones where they overlap. phrases: N strings, one per mask.

    Returns: [H', W', 3] uint8 RGB with the overlaid image at rows 0..H-1, columns 0..W-1; H' = H and
    W' = W when ``style.legend`` is False, otherwise H' > H (legend rows) and W' >= W (long phrases).
    """
    style = style or OverlayStyle()
    require_rgb_image(image_rgb)
    if len(masks) != len(phrases):
        raise ValueError(f"need one phrase per mask, got {len(masks)} masks and {len(phrases)} phrases")
    height, width = image_rgb.shape[:2]
    bool_masks = [as_bool_mask(mask, f"target {j}", (height, width)) for j, mask in enumerate(masks)]
    canvas = np.ascontiguousarray(image_rgb).copy()
    for j, mask in enumerate(bool_masks):
        _tint(canvas, mask, target_color(j), style.alpha)
    thickness = style.contour_px if style.contour_px is not None else max(1, round(min(height, width) / 250))
    if thickness > 0:
        for j, mask in enumerate(bool_masks):
            contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_LIST, cv2.CHAIN_APPROX_NONE)
            cv2.drawContours(canvas, contours, -1, target_color(j), thickness)
    if not style.legend:
        return canvas
    return _add_legend(canvas, phrases, style)


def _tint(canvas: np.ndarray, mask: np.ndarray, colour: tuple[int, int, int], alpha: float) -> None:
    """Blend ``colour`` into ``canvas`` [H, W, 3] uint8 (in place) where ``mask`` [H, W] is True."""
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        return
    # Work on the mask's bounding box only: small targets on large photos stay cheap.
    box = (slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))
    region = np.ascontiguousarray(canvas[box])
    solid = np.empty_like(region)
    solid[:] = colour
    blended = cv2.addWeighted(region, 1.0 - alpha, solid, alpha, 0.0)
    np.copyto(canvas[box], blended, where=mask[box][:, :, None])


def as_bool_mask(mask: np.ndarray, what: str, shape: tuple[int, ...] | None = None) -> np.ndarray:
    """Validate a mask (2-D, bool or only 0/1, of ``shape`` when given) and return it as [H, W] bool.

    ``what`` names the mask in the error message, e.g. "target 2".
    """
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"{what}: mask must be [H, W], got shape {mask.shape}")
    if shape is not None and mask.shape != tuple(shape):
        raise ValueError(f"{what}: mask has shape {mask.shape}, expected the image's [H, W] = {tuple(shape)}")
    if mask.dtype == np.bool_:
        return mask
    if not np.isin(mask, (0, 1)).all():
        raise ValueError(
            f"{what}: mask must be boolean (or hold only 0 and 1), got dtype {mask.dtype} with other values; "
            f"threshold it first"
        )
    return mask.astype(bool)


def _shorten(phrase: str, max_chars: int) -> str:
    phrase = " ".join(phrase.split())
    return phrase if len(phrase) <= max_chars else phrase[: max_chars - 1] + "…"


def _add_legend(image: np.ndarray, phrases: list[str], style: OverlayStyle) -> np.ndarray:
    """[H, W, 3] -> [H + legend, max(W, legend width), 3]: rows 'j [swatch] phrase' on white below the image."""
    height, width = image.shape[:2]
    font_px = style.font_px or int(np.clip(round(width / 40), 12, 48))
    font = ImageFont.load_default(size=font_px)
    pad = max(4, font_px // 2)
    row_h = round(font_px * 1.6)
    swatch = font_px
    rows = [(str(j), _shorten(p, style.max_phrase_chars)) for j, p in enumerate(phrases)] or [("", "no target masks")]
    index_w = max(int(font.getlength(index)) for index, _ in rows)
    text_x = pad + index_w + pad + swatch + pad
    legend_w = text_x + max(int(font.getlength(text)) for _, text in rows) + pad
    canvas_w = max(width, legend_w)
    canvas = Image.new("RGB", (canvas_w, height + 2 * pad + row_h * len(rows)), (255, 255, 255))
    canvas.paste(Image.fromarray(image), (0, 0))
    draw = ImageDraw.Draw(canvas)
    for j, (index, text) in enumerate(rows):
        top = height + pad + j * row_h
        middle = top + row_h // 2
        if index:
            draw.text((pad, middle), index, fill=(0, 0, 0), font=font, anchor="lm")
            swatch_x = pad + index_w + pad
            draw.rectangle(
                (swatch_x, middle - swatch // 2, swatch_x + swatch - 1, middle + swatch // 2),
                fill=target_color(j),
                outline=(0, 0, 0),
            )
        draw.text((text_x if index else pad, middle), text, fill=(0, 0, 0), font=font, anchor="lm")
    return np.asarray(canvas, dtype=np.uint8).copy()
