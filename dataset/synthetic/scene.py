"""Scenes of the synthetic world: flat shapes on a plain canvas, with exact visible masks."""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from .config import WorldConfig


@dataclass
class Shape:
    kind: str
    colour: str
    size: str
    centre: tuple[float, float]
    radius: float
    mask: np.ndarray | None = None  # [H, W] uint8 {0, 1}: the visible part
    cx: float = 0.0  # centroid and area of the visible part
    cy: float = 0.0
    area: int = 0

    @property
    def name(self) -> str:
        """"large red circle"."""
        return f"{self.size} {self.colour} {self.kind}"

    @property
    def short_name(self) -> str:
        return f"{self.colour} {self.kind}"

    def set_mask(self, mask: np.ndarray) -> None:
        self.mask = mask
        m = cv2.moments(mask, binaryImage=True)
        self.cx, self.cy, self.area = m["m10"] / m["m00"], m["m01"] / m["m00"], int(m["m00"])


@dataclass
class Scene:
    image: np.ndarray  # [H, W, 3] uint8 RGB
    shapes: list[Shape]

    @property
    def height(self) -> int:
        return self.image.shape[0]

    @property
    def width(self) -> int:
        return self.image.shape[1]


def _regular(cx: float, cy: float, r: float, n: int, phase: float) -> np.ndarray:
    angles = phase + np.arange(n) * 2 * np.pi / n
    return np.stack([cx + r * np.cos(angles), cy + r * np.sin(angles)], axis=1)


def shape_polygon(kind: str, cx: float, cy: float, r: float) -> np.ndarray | None:
    """[P, 2] polygon of ``kind`` (None for a circle)."""
    if kind == "circle":
        return None
    if kind == "square":
        h = 0.8 * r
        return np.array([[cx - h, cy - h], [cx + h, cy - h], [cx + h, cy + h], [cx - h, cy + h]])
    if kind == "triangle":
        return _regular(cx, cy + 0.15 * r, 1.1 * r, 3, -np.pi / 2)
    if kind == "star":
        outer = _regular(cx, cy, 1.1 * r, 5, -np.pi / 2)
        inner = _regular(cx, cy, 0.5 * r, 5, -np.pi / 2 + np.pi / 5)
        return np.stack([outer, inner], axis=1).reshape(-1, 2)
    if kind == "hexagon":
        return _regular(cx, cy, r, 6, 0.0)
    if kind == "diamond":
        return np.array([[cx, cy - 1.1 * r], [cx + 0.7 * r, cy], [cx, cy + 1.1 * r], [cx - 0.7 * r, cy]])
    raise ValueError(f"unknown shape kind '{kind}'")


def draw(target: np.ndarray, shape: Shape, value) -> None:
    poly = shape_polygon(shape.kind, *shape.centre, shape.radius)
    if poly is None:
        cv2.circle(target, (int(round(shape.centre[0])), int(round(shape.centre[1]))), int(round(shape.radius)), value, -1)
    else:
        cv2.fillPoly(target, [np.round(poly).astype(np.int32)], value)


def _label_map(shapes: list[Shape], height: int, width: int) -> np.ndarray:
    label = np.zeros((height, width), dtype=np.uint8)
    for i, shape in enumerate(shapes):
        draw(label, shape, i + 1)
    return label


def generate_scene(rng: np.random.Generator, cfg: WorldConfig, min_shapes: int | None = None) -> Scene:
    """A canvas with shapes of distinct (colour, kind) that keep at least ``min_visible`` of their area."""
    height, width = (int(v) for v in rng.integers(cfg.min_side, cfg.max_side + 1, size=2))
    lo = max(cfg.min_shapes, min_shapes or 0)
    count = int(rng.integers(lo, cfg.max_shapes + 1))
    colours, kinds = list(cfg.colours), list(cfg.kinds)
    pairs = [(c, k) for c in colours for k in kinds]
    shapes: list[Shape] = []
    own_area: list[int] = []
    own_masks: list[np.ndarray] = []
    side = min(height, width)
    for _ in range(count):
        for _ in range(cfg.placement_tries):
            colour, kind = pairs[int(rng.integers(len(pairs)))]
            if any(s.colour == colour and s.kind == kind for s in shapes):
                continue
            size = list(cfg.sizes)[int(rng.integers(len(cfg.sizes)))]
            lo_r, hi_r = cfg.sizes[size]
            r = float(rng.uniform(lo_r, hi_r)) * side
            margin = 1.15 * r
            if width - 2 * margin <= 0 or height - 2 * margin <= 0:
                continue
            centre = (float(rng.uniform(margin, width - margin)), float(rng.uniform(margin, height - margin)))
            candidate = Shape(kind, colour, size, centre, r)
            alone = np.zeros((height, width), dtype=np.uint8)
            draw(alone, candidate, 1)
            # Touching shapes of one colour would look like one blob: keep them apart.
            grown = cv2.dilate(alone, np.ones((5, 5), np.uint8))
            if any(s.colour == colour and (grown & own).any() for s, own in zip(shapes, own_masks)):
                continue
            label = _label_map(shapes + [candidate], height, width)
            areas = own_area + [int(alone.sum())]
            if all((label == i + 1).sum() >= cfg.min_visible * areas[i] for i in range(len(areas))):
                shapes.append(candidate)
                own_area.append(areas[-1])
                own_masks.append(alone)
                break
    if not shapes:
        raise RuntimeError("could not place a single shape: the sizes in WorldConfig are too large for the canvas")
    label = _label_map(shapes, height, width)
    background = int(rng.integers(cfg.background_range[0], cfg.background_range[1] + 1))
    image = np.full((height, width, 3), background, dtype=np.uint8)
    for i, shape in enumerate(shapes):
        shape.set_mask((label == i + 1).astype(np.uint8))
        image[shape.mask == 1] = cfg.colours[shape.colour]
    return Scene(image, shapes)
