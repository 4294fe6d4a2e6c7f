"""Export one answer: lossless PNG masks, an overlay with a legend, and a JSON record with COCO RLE.

Files written by ``save_answer`` for stem ``s`` (targets numbered j = 0, 1, ... in answer order):

- ``s_mask_<j>.png``: single-channel 8-bit PNG, 255 inside target j, 0 outside;
- ``s_overlay.png``: the image tinted per target with contours, legend below (``serving.overlay``);
- ``s.json``: ``{"question", "answer", "targets": [{"phrase", "bbox": [x, y, w, h], "area", "score",
  "rle": {"size": [h, w], "counts": str}}], "warnings": [str]}``; ``rle`` is COCO's compressed RLE
  (pycocotools), ``bbox`` is in pixels with w = last column - first column + 1 (all zeros for an empty
  mask), ``area`` the number of mask pixels; ``warnings`` the answer's (dropped or withdrawn targets).

Each file is written to a temporary file in the same folder and moved into place with ``os.replace``,
so a crash never leaves a half-written file; the JSON is written last and marks a complete export.
"""

from __future__ import annotations

import glob
import io
import json
import math
import os
import re
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from pycocotools import mask as coco_mask

from .image_io import require_rgb_image
from .overlay import OverlayStyle, as_bool_mask, draw_overlay


@dataclass
class ExportTarget:
    """One segmented target of an answer.

    phrase: the text the mask belongs to. mask: [H, W] bool. score: the model's confidence for the mask.
    """

    phrase: str
    mask: np.ndarray
    score: float


def mask_to_rle(mask: np.ndarray) -> dict[str, Any]:
    """[H, W] bool -> COCO compressed RLE ``{"size": [H, W], "counts": str}``."""
    encoded = coco_mask.encode(np.asfortranarray(np.asarray(mask, dtype=np.uint8)))
    return {"size": [int(encoded["size"][0]), int(encoded["size"][1])], "counts": encoded["counts"].decode("utf-8")}


def rle_to_mask(rle: dict[str, Any]) -> np.ndarray:
    """COCO compressed RLE (counts as str or bytes) -> [H, W] bool."""
    counts = rle["counts"]
    encoded = {"size": list(rle["size"]), "counts": counts.encode("utf-8") if isinstance(counts, str) else counts}
    return coco_mask.decode(encoded).astype(bool)


def mask_bbox(mask: np.ndarray) -> list[int]:
    """[H, W] bool -> [x, y, w, h] of the tightest box holding the mask; [0, 0, 0, 0] when empty."""
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        return [0, 0, 0, 0]
    return [int(cols[0]), int(rows[0]), int(cols[-1] - cols[0] + 1), int(rows[-1] - rows[0] + 1)]


def answer_record(question: str, answer: str, targets: list[ExportTarget], warnings: Sequence[str] = ()) -> dict[str, Any]:
    """The JSON record of an answer (the layout in the module docstring); masks must be [H, W] bool."""
    if not isinstance(question, str) or not isinstance(answer, str):
        raise ValueError(f"question and answer must be str, got {type(question).__name__} and {type(answer).__name__}")
    records = []
    for j, target in enumerate(targets):
        mask = as_bool_mask(target.mask, f"target {j}")
        records.append(
            {
                "phrase": str(target.phrase),
                "bbox": mask_bbox(mask),
                "area": int(mask.sum()),
                "score": _checked_score(target.score, j),
                "rle": mask_to_rle(mask),
            }
        )
    return {"question": question, "answer": answer, "targets": records, "warnings": [str(w) for w in warnings]}


def save_answer(
    out_dir: str | os.PathLike,
    stem: str,
    image_rgb: np.ndarray,
    question: str,
    answer: str,
    targets: list[ExportTarget],
    style: OverlayStyle | None = None,
    warnings: Sequence[str] = (),
) -> dict[str, Path]:
    """Write the masks, the overlay and the JSON of one answer into ``out_dir`` (created if missing).

    image_rgb: [H, W, 3] uint8 RGB, the image the masks belong to. targets: in answer order, each mask
    [H, W] bool. Mask files ``<stem>_mask_<j>.png`` left from an earlier export of the same stem with
    more targets are removed, so the folder always matches the JSON.

    Returns: ``{"mask_0": path, ..., "overlay": path, "json": path}`` in the order written.
    """
    _check_stem(stem)
    require_rgb_image(image_rgb)
    masks = [as_bool_mask(target.mask, f"target {j}", image_rgb.shape[:2]) for j, target in enumerate(targets)]
    record = answer_record(question, answer, targets, warnings)
    folder = Path(out_dir)
    folder.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}
    for j, mask in enumerate(masks):
        path = folder / f"{stem}_mask_{j}.png"
        _write_atomic(path, _png_bytes(mask.astype(np.uint8) * 255))
        written[f"mask_{j}"] = path
    overlay = draw_overlay(image_rgb, masks, [target.phrase for target in targets], style)
    written["overlay"] = folder / f"{stem}_overlay.png"
    _write_atomic(written["overlay"], _png_bytes(overlay))
    _remove_stale_masks(folder, stem, len(masks))
    written["json"] = folder / f"{stem}.json"
    _write_atomic(written["json"], (json.dumps(record, ensure_ascii=False, indent=2) + "\n").encode("utf-8"))
    return written


def load_masks_from_json(path_or_dict: str | os.PathLike | dict[str, Any]) -> list[np.ndarray]:
    """Decode the masks of a ``save_answer`` JSON (a path or the loaded dict): a list of [H, W] bool, in order."""
    if isinstance(path_or_dict, dict):
        name, record = "answer record", path_or_dict
    else:
        name = f"'{os.fspath(path_or_dict)}'"
        try:
            record = json.loads(Path(path_or_dict).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ValueError(f"{name}: cannot read the answer JSON ({exc})") from exc
    targets = record.get("targets") if isinstance(record, dict) else None
    if not isinstance(targets, list):
        raise ValueError(
            f"{name}: expected a JSON object with a 'targets' list (as written by serving.export.save_answer)"
        )
    masks = []
    for j, target in enumerate(targets):
        rle = target.get("rle") if isinstance(target, dict) else None
        if not isinstance(rle, dict) or "size" not in rle or "counts" not in rle:
            raise ValueError(f"{name}: targets[{j}] needs an 'rle' object with 'size' [h, w] and 'counts'")
        try:
            masks.append(rle_to_mask(rle))
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{name}: targets[{j}].rle is not a valid COCO RLE ({exc})") from exc
    return masks


def _checked_score(score: float, j: int) -> float:
    value = float(score)
    if not math.isfinite(value):
        raise ValueError(f"target {j}: score must be a finite number (JSON has no NaN/inf), got {score}")
    return value


def _check_stem(stem: str) -> None:
    separators = {"/", os.sep, os.altsep or "/"}
    if not stem or stem in (".", "..") or "\0" in stem or any(sep in stem for sep in separators):
        raise ValueError(f"stem must be a plain file-name prefix without path separators, got {stem!r}")


def _png_bytes(pixels: np.ndarray) -> bytes:
    """[H, W] or [H, W, 3] uint8 -> lossless PNG bytes."""
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def _write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to a temporary file beside ``path`` and move it into place."""
    fd, temp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(temp_name, 0o644)
        os.replace(temp_name, path)
    except BaseException:
        Path(temp_name).unlink(missing_ok=True)
        raise


def _remove_stale_masks(folder: Path, stem: str, count: int) -> None:
    pattern = re.compile(re.escape(stem) + r"_mask_(\d+)\.png")
    for path in folder.glob(f"{glob.escape(stem)}_mask_*.png"):
        match = pattern.fullmatch(path.name)
        if match and int(match.group(1)) >= count:
            path.unlink()
