"""serving.export and serving.overlay: lossless masks, RLE round trip, overlay colours and legend, atomic writes."""

from __future__ import annotations

import itertools
import json
import os
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from serving.export import ExportTarget, answer_record, load_masks_from_json, mask_bbox, save_answer
from serving.overlay import PALETTE_HEX, OverlayStyle, draw_overlay, target_color, target_color_hex

HEIGHT, WIDTH = 48, 64

# pycocotools 2.0.11's decode trips a numpy 2 deprecation inside its own Cython code.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning")


def _image() -> np.ndarray:
    """[48, 64, 3] uint8 with a horizontal gradient, so tinting is visible everywhere."""
    ramp = np.tile(np.linspace(20, 230, WIDTH).astype(np.uint8), (HEIGHT, 1))
    return np.stack([ramp, np.full((HEIGHT, WIDTH), 90, np.uint8), ramp[:, ::-1]], axis=2)


def _targets() -> list[ExportTarget]:
    rectangle = np.zeros((HEIGHT, WIDTH), bool)
    rectangle[10:20, 30:50] = True
    yy, xx = np.mgrid[:HEIGHT, :WIDTH]
    disc = (yy - 32) ** 2 + (xx - 16) ** 2 <= 9**2
    empty = np.zeros((HEIGHT, WIDTH), bool)
    return [
        ExportTarget("the red box", rectangle, 0.9),
        ExportTarget("a round thing", disc, 0.75),
        ExportTarget("something absent", empty, 0.1),
    ]


def test_round_trip_png_rle_inputs(tmp_path: Path) -> None:
    targets = _targets()
    written = save_answer(tmp_path, "ans", _image(), "Where are they?", "Here [0], [1] and [2].", targets)
    assert list(written) == ["mask_0", "mask_1", "mask_2", "overlay", "json"]
    rle_masks = load_masks_from_json(written["json"])
    assert len(rle_masks) == 3
    for j, target in enumerate(targets):
        path = written[f"mask_{j}"]
        assert path == tmp_path / f"ans_mask_{j}.png"
        assert path.read_bytes().startswith(b"\x89PNG")
        with Image.open(path) as png:
            assert png.mode == "L" and png.format == "PNG"
            pixels = np.asarray(png)
        assert set(np.unique(pixels)) <= {0, 255}
        np.testing.assert_array_equal(pixels == 255, target.mask)
        assert rle_masks[j].dtype == np.bool_
        np.testing.assert_array_equal(rle_masks[j], target.mask)
    from_dict = load_masks_from_json(json.loads(written["json"].read_text(encoding="utf-8")))
    for a, b in zip(from_dict, rle_masks):
        np.testing.assert_array_equal(a, b)


def test_json_layout_and_values(tmp_path: Path) -> None:
    written = save_answer(tmp_path, "ans", _image(), "Where is the box?", "It is here.", _targets())
    record = json.loads(written["json"].read_text(encoding="utf-8"))
    assert list(record) == ["question", "answer", "targets", "warnings"]
    assert record["question"] == "Where is the box?" and record["answer"] == "It is here." and record["warnings"] == []
    warned = save_answer(tmp_path, "warned", _image(), "q", "a", [], warnings=["target 'blue star': withdrawn"])
    assert json.loads(warned["json"].read_text(encoding="utf-8"))["warnings"] == ["target 'blue star': withdrawn"]
    assert [t["phrase"] for t in record["targets"]] == ["the red box", "a round thing", "something absent"]
    for target in record["targets"]:
        assert list(target) == ["phrase", "bbox", "area", "score", "rle"]
        assert list(target["rle"]) == ["size", "counts"]
        assert target["rle"]["size"] == [HEIGHT, WIDTH] and isinstance(target["rle"]["counts"], str)
    box, disc, absent = record["targets"]
    assert box["bbox"] == [30, 10, 20, 10] and box["area"] == 200 and box["score"] == 0.9
    assert disc["bbox"] == [7, 23, 19, 19] and disc["area"] == int(_targets()[1].mask.sum())
    assert absent["bbox"] == [0, 0, 0, 0] and absent["area"] == 0


def test_mask_bbox_single_pixel() -> None:
    mask = np.zeros((5, 7), bool)
    mask[4, 6] = True
    assert mask_bbox(mask) == [6, 4, 1, 1]


def test_overlay_size_and_tint(tmp_path: Path) -> None:
    image = _image()
    targets = _targets()
    written = save_answer(tmp_path, "ans", image, "q", "a", targets)
    assert written["overlay"].read_bytes().startswith(b"\x89PNG")
    with Image.open(written["overlay"]) as png:
        assert png.format == "PNG" and png.mode == "RGB"
        overlay = np.asarray(png).astype(int)
    assert overlay.shape[0] > HEIGHT and overlay.shape[1] >= WIDTH
    for j, (y, x) in enumerate([(15, 40), (32, 16)]):
        expected = np.rint(image[y, x] * 0.5 + np.asarray(target_color(j)) * 0.5)
        assert np.abs(overlay[y, x] - expected).max() <= 1, (j, overlay[y, x], expected)
    np.testing.assert_array_equal(overlay[2, 2], image[2, 2])
    np.testing.assert_array_equal(overlay[45, 60], image[45, 60])
    # The contour of target 0 is drawn in its full colour on the box border.
    np.testing.assert_array_equal(overlay[10, 40], target_color(0))
    # The legend holds each target's swatch: its colour appears below the image, untinted.
    legend = overlay[HEIGHT:].reshape(-1, 3)
    for j in range(3):
        assert (legend == target_color(j)).all(axis=1).sum() > 20


def test_overlay_without_legend_keeps_size() -> None:
    image = _image()
    targets = _targets()
    out = draw_overlay(image, [t.mask for t in targets], [t.phrase for t in targets], OverlayStyle(legend=False))
    assert out.shape == image.shape and out.dtype == np.uint8
    plain = draw_overlay(image, [], [], OverlayStyle(legend=False))
    np.testing.assert_array_equal(plain, image)


def test_long_phrase_widens_canvas() -> None:
    mask = np.zeros((HEIGHT, WIDTH), bool)
    out = draw_overlay(_image(), [mask], ["a very long phrase " * 5], OverlayStyle(font_px=12))
    assert out.shape[1] > WIDTH
    np.testing.assert_array_equal(out[:HEIGHT, :WIDTH], _image())


def test_empty_answer_writes_overlay_and_json(tmp_path: Path) -> None:
    written = save_answer(tmp_path, "none", _image(), "Is there a cat?", "No.", [])
    assert list(written) == ["overlay", "json"]
    record = json.loads(written["json"].read_text(encoding="utf-8"))
    assert record == {"question": "Is there a cat?", "answer": "No.", "targets": [], "warnings": []}
    assert load_masks_from_json(written["json"]) == []
    with Image.open(written["overlay"]) as png:
        overlay = np.asarray(png)
    assert overlay.shape[0] > HEIGHT
    np.testing.assert_array_equal(overlay[:HEIGHT, :WIDTH], _image())


def test_reexport_removes_stale_masks_and_leaves_no_temp_files(tmp_path: Path) -> None:
    save_answer(tmp_path, "ans", _image(), "q", "a", _targets())
    (tmp_path / "ans_mask_extra.png").write_bytes(b"kept")
    save_answer(tmp_path, "ans", _image(), "q", "a", _targets()[:1])
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["ans.json", "ans_mask_0.png", "ans_mask_extra.png", "ans_overlay.png"]


def test_failed_write_keeps_previous_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    written = save_answer(tmp_path, "ans", _image(), "first question", "a", _targets())
    before = {path: path.read_bytes() for path in written.values()}

    def broken_replace(src: str, dst: str) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk full"):
        save_answer(tmp_path, "ans", _image()[::-1].copy(), "second question", "b", _targets()[::-1])
    monkeypatch.undo()
    assert {path: path.read_bytes() for path in written.values()} == before
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_unicode_text_is_kept(tmp_path: Path) -> None:
    targets = [ExportTarget("la tête du chat 猫", _targets()[0].mask, 1.0)]
    written = save_answer(tmp_path, "u", _image(), "Où est le chat ?", "Ici.", targets)
    text = written["json"].read_text(encoding="utf-8")
    assert "猫" in text and json.loads(text)["targets"][0]["phrase"] == "la tête du chat 猫"


def test_bad_inputs_are_named() -> None:
    image = _image()
    wrong_shape = ExportTarget("x", np.zeros((HEIGHT + 1, WIDTH), bool), 0.5)
    with pytest.raises(ValueError, match=r"target 0: mask has shape \(49, 64\), expected the image's"):
        save_answer("/nonexistent-never-created", "s", image, "q", "a", [wrong_shape])
    soft = ExportTarget("x", np.full((HEIGHT, WIDTH), 0.7), 0.5)
    with pytest.raises(ValueError, match="threshold it first"):
        answer_record("q", "a", [soft])
    nan_score = ExportTarget("x", np.zeros((HEIGHT, WIDTH), bool), float("nan"))
    with pytest.raises(ValueError, match="score must be a finite number"):
        answer_record("q", "a", [nan_score])
    with pytest.raises(ValueError, match="stem must be a plain file-name prefix"):
        save_answer("/nonexistent-never-created", "../up", image, "q", "a", [])
    with pytest.raises(ValueError, match="uint8 array"):
        save_answer("/nonexistent-never-created", "s", image.astype(np.float32), "q", "a", [])
    with pytest.raises(ValueError, match="one phrase per mask"):
        draw_overlay(image, [np.zeros((HEIGHT, WIDTH), bool)], [])
    assert not Path("/nonexistent-never-created").exists()
    with pytest.raises(ValueError, match="'targets' list"):
        load_masks_from_json({"question": "q"})


def test_zero_one_integer_masks_are_accepted(tmp_path: Path) -> None:
    mask = _targets()[0].mask.astype(np.uint8)
    written = save_answer(tmp_path, "int", _image(), "q", "a", [ExportTarget("box", mask, 0.5)])
    np.testing.assert_array_equal(load_masks_from_json(written["json"])[0], mask.astype(bool))


def test_palette_values() -> None:
    assert len(PALETTE_HEX) >= 10 and len(set(PALETTE_HEX)) == len(PALETTE_HEX)
    for j, hex_colour in enumerate(PALETTE_HEX):
        assert target_color_hex(j) == hex_colour
        assert "#%02X%02X%02X" % target_color(j) == hex_colour
    assert target_color(len(PALETTE_HEX)) == target_color(0)
    with pytest.raises(ValueError):
        target_color(-1)


# Machado et al. (2009) simulation matrices (severity 1.0), applied in linear RGB.
_CVD = {
    "normal": np.eye(3),
    "deuteranopia": np.array([[0.367322, 0.860646, -0.227968], [0.280085, 0.672501, 0.047413], [-0.011820, 0.042940, 0.968881]]),
    "protanopia": np.array([[0.152286, 1.052583, -0.204868], [0.114503, 0.786281, 0.099216], [-0.003882, -0.048116, 1.051998]]),
    "tritanopia": np.array([[1.255528, -0.076749, -0.178779], [-0.078411, 0.930809, 0.147602], [0.004733, 0.691367, 0.303900]]),
}


@pytest.mark.parametrize("vision", list(_CVD))
def test_palette_stays_distinct_under_colour_blindness(vision: str) -> None:
    """Every pair of the first ten colours differs by at least 15 CIELAB units (a clearly visible step)."""
    srgb = np.array([target_color(j) for j in range(10)], np.float64) / 255
    linear = np.where(srgb <= 0.04045, srgb / 12.92, ((srgb + 0.055) / 1.055) ** 2.4)
    simulated = np.clip(linear @ _CVD[vision].T, 0, 1)
    gamma = np.where(simulated <= 0.0031308, simulated * 12.92, 1.055 * simulated ** (1 / 2.4) - 0.055)
    lab = cv2.cvtColor(gamma.astype(np.float32)[None], cv2.COLOR_RGB2Lab)[0]
    closest = min(float(np.linalg.norm(lab[a] - lab[b])) for a, b in itertools.combinations(range(10), 2))
    assert closest >= 15.0
