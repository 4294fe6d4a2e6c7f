"""serving.image_io: every odd or broken image is built here and must load as [H, W, 3] uint8 or fail clearly."""

from __future__ import annotations

import dataclasses
import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from serving.image_io import ImageLoadConfig, ImageLoadError, check_image_limits, load_image


def _png_with_header(width: int, height: int) -> bytes:
    """A PNG whose IHDR claims ``width`` x ``height`` RGB pixels but whose data is a few bytes."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def _save(image: Image.Image, path: Path, **kwargs) -> Path:
    image.save(path, **kwargs)
    return path


def _noise(height: int, width: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def test_rgb_sources_agree(tmp_path: Path) -> None:
    pixels = _noise(12, 17)
    path = _save(Image.fromarray(pixels), tmp_path / "rgb.png")
    for source in (path, str(path), path.read_bytes(), Image.open(path), pixels):
        loaded = load_image(source)
        assert loaded.dtype == np.uint8 and loaded.shape == (12, 17, 3)
        np.testing.assert_array_equal(loaded, pixels)
    assert load_image(pixels) is not pixels


def test_error_is_a_value_error() -> None:
    assert issubclass(ImageLoadError, ValueError)


def test_zero_byte_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.png"
    path.write_bytes(b"")
    with pytest.raises(ImageLoadError, match="empty") as info:
        load_image(path)
    assert str(path) in str(info.value) and "Accepted: PNG, JPEG" in str(info.value)
    with pytest.raises(ImageLoadError, match="empty"):
        load_image(b"")


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_truncated_file(tmp_path: Path, fmt: str) -> None:
    path = tmp_path / f"cut.{fmt.lower()}"
    buffer = io.BytesIO()
    Image.fromarray(_noise(128, 128)).save(buffer, format=fmt)
    data = buffer.getvalue()
    path.write_bytes(data[: len(data) * 6 // 10])
    with pytest.raises(ImageLoadError, match="truncated or corrupt") as info:
        load_image(path)
    assert str(path) in str(info.value) and fmt in str(info.value)


def test_text_file(tmp_path: Path) -> None:
    path = tmp_path / "notes.png"
    path.write_text("this is not an image\n")
    with pytest.raises(ImageLoadError, match="not a readable image") as info:
        load_image(path)
    assert str(path) in str(info.value) and "PNG" in str(info.value)


def test_missing_path_and_directory(tmp_path: Path) -> None:
    with pytest.raises(ImageLoadError, match="no such file"):
        load_image(tmp_path / "nowhere.png")
    with pytest.raises(ImageLoadError, match="directory"):
        load_image(tmp_path)


def test_unsupported_source_type() -> None:
    with pytest.raises(ImageLoadError, match="unsupported source type"):
        load_image(42)  # type: ignore[arg-type]


def test_refused_format_unless_configured(tmp_path: Path) -> None:
    path = _save(Image.fromarray(_noise(8, 8)), tmp_path / "old.pcx")
    with pytest.raises(ImageLoadError, match="not a readable image"):
        load_image(path)
    loaded = load_image(path, ImageLoadConfig(formats=("PCX",)))
    np.testing.assert_array_equal(loaded, _noise(8, 8))


@pytest.mark.parametrize("side", [50_000, 10_000])
def test_decompression_bomb_header(side: int) -> None:
    """50k^2 trips Pillow's bomb error, 10k^2 Pillow's bomb warning; both must become ImageLoadError."""
    data = _png_with_header(side, side)
    with pytest.raises(ImageLoadError, match="decompression bomb") as info:
        load_image(data)
    assert "max_pixels" in str(info.value)
    with pytest.raises(ImageLoadError, match="decompression bomb"):
        check_image_limits(data)


def test_pixel_limit_checked_before_decoding() -> None:
    """49 MP is below Pillow's guard; our 40 MP limit must reject it from the header (the data is bogus)."""
    with pytest.raises(ImageLoadError, match="7000x7000 = 49.0 megapixels, over the pixel limit of 40 megapixels"):
        load_image(_png_with_header(7000, 7000))


def test_large_cheap_image_with_low_pixel_limit(tmp_path: Path) -> None:
    path = _save(Image.new("RGB", (2000, 1000), (9, 8, 7)), tmp_path / "wide.png")
    config = ImageLoadConfig(max_pixels=1_000_000)
    with pytest.raises(ImageLoadError, match="2000x1000 = 2.0 megapixels") as info:
        load_image(path, config)
    assert "ImageLoadConfig.max_pixels" in str(info.value)
    with pytest.raises(ImageLoadError, match="over the pixel limit"):
        check_image_limits(path, config)
    with pytest.raises(ImageLoadError, match="over the pixel limit"):
        load_image(np.zeros((1000, 2000, 3), np.uint8), config)
    assert load_image(path).shape == (1000, 2000, 3)
    assert check_image_limits(path) == (1000, 2000)


def test_byte_limit(tmp_path: Path) -> None:
    path = _save(Image.fromarray(_noise(32, 32)), tmp_path / "noise.png")
    config = ImageLoadConfig(max_bytes=1000)
    with pytest.raises(ImageLoadError, match="over the size limit") as info:
        check_image_limits(path, config)
    assert "ImageLoadConfig.max_bytes" in str(info.value)
    with pytest.raises(ImageLoadError, match="over the size limit"):
        load_image(path.read_bytes(), config)
    assert load_image(path, ImageLoadConfig(max_bytes=None)).shape == (32, 32, 3)


def test_config_validation() -> None:
    with pytest.raises(ValueError, match="max_pixels"):
        ImageLoadConfig(max_pixels=0)
    with pytest.raises(ValueError, match="formats"):
        ImageLoadConfig(formats=())
    with pytest.raises(ValueError, match="cannot open .'NOPE'."):
        ImageLoadConfig(formats=("PNG", "NOPE"))


def test_multi_picture_jpeg_from_phones(tmp_path: Path) -> None:
    path = tmp_path / "phone.jpg"
    Image.new("RGB", (6, 5), (0, 0, 255)).save(path, format="MPO", append_images=[Image.new("RGB", (6, 5))])
    assert Image.open(path).format == "MPO"
    loaded = load_image(path)
    assert loaded.shape == (5, 6, 3) and loaded[2, 2, 2] > 240


def test_grey_and_one_bit(tmp_path: Path) -> None:
    grey = np.array([[0, 100], [200, 255]], np.uint8)
    loaded = load_image(_save(Image.fromarray(grey), tmp_path / "l.png"))
    np.testing.assert_array_equal(loaded, np.repeat(grey[:, :, None], 3, axis=2))
    bits = Image.new("1", (3, 1), 0)
    bits.putpixel((1, 0), 1)
    loaded = load_image(_save(bits, tmp_path / "one.png"))
    np.testing.assert_array_equal(loaded[0, :, 0], [0, 255, 0])
    assert loaded.shape == (1, 3, 3)


def test_alpha_is_composited_onto_white(tmp_path: Path) -> None:
    rgba = np.array([[[255, 0, 0, 128], [0, 0, 0, 0], [10, 20, 30, 255]]], np.uint8)
    loaded = load_image(_save(Image.fromarray(rgba, mode="RGBA"), tmp_path / "rgba.png"))
    np.testing.assert_array_equal(loaded[0], [[255, 127, 127], [255, 255, 255], [10, 20, 30]])
    np.testing.assert_array_equal(load_image(rgba), loaded)
    la = Image.fromarray(np.array([[[100, 0], [100, 255]]], np.uint8), mode="LA")
    loaded = load_image(_save(la, tmp_path / "la.png"))
    np.testing.assert_array_equal(loaded[0], [[255, 255, 255], [100, 100, 100]])


def test_alpha_dropped_as_the_original_read_images(tmp_path: Path) -> None:
    """alpha="drop" keeps the stored colours of transparent pixels, as cv2.imread (the original's reader) does."""
    import cv2

    rgba = np.array([[[255, 0, 0, 128], [7, 8, 9, 0], [10, 20, 30, 255]]], np.uint8)
    path = _save(Image.fromarray(rgba, mode="RGBA"), tmp_path / "rgba.png")
    drop = ImageLoadConfig(alpha="drop")
    loaded = load_image(path, drop)
    np.testing.assert_array_equal(loaded[0], rgba[0, :, :3])
    np.testing.assert_array_equal(loaded, cv2.cvtColor(cv2.imread(str(path), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB))
    np.testing.assert_array_equal(load_image(rgba, drop), loaded)
    la = _save(Image.fromarray(np.array([[[100, 0], [100, 255]]], np.uint8), mode="LA"), tmp_path / "la.png")
    np.testing.assert_array_equal(load_image(la, drop)[0], [[100, 100, 100], [100, 100, 100]])
    with pytest.raises(ValueError, match="alpha must be one of"):
        ImageLoadConfig(alpha="black")


def test_predictor_reads_alpha_as_its_folder_says(tmp_path: Path) -> None:
    from model.processing_pixellm import PixelLMImageProcessor
    from model.tiny import build_tiny
    from serving.predictor import PixelLMPredictor

    folder = build_tiny(tmp_path / "tiny")
    rgba = np.zeros((8, 8, 4), np.uint8)
    rgba[..., 0] = 200
    assert PixelLMPredictor.from_pretrained(folder).start(rgba).image[0, 0].tolist() == [255, 255, 255]
    dataclasses.replace(PixelLMImageProcessor.from_pretrained(folder), alpha="drop").save_pretrained(folder)
    assert PixelLMPredictor.from_pretrained(folder).start(rgba).image[0, 0].tolist() == [200, 0, 0]
    override = PixelLMPredictor.from_pretrained(folder, image_load_config=ImageLoadConfig(alpha="white"))
    assert override.start(rgba).image[0, 0].tolist() == [255, 255, 255]


def test_palette_with_and_without_transparency(tmp_path: Path) -> None:
    palette = Image.new("P", (2, 1))
    palette.putpalette([255, 0, 0, 0, 255, 0] + [0] * 762)
    palette.putpixel((1, 0), 1)
    loaded = load_image(_save(palette, tmp_path / "p.png"))
    np.testing.assert_array_equal(loaded[0], [[255, 0, 0], [0, 255, 0]])
    loaded = load_image(_save(palette, tmp_path / "p_transparent.png", transparency=1))
    np.testing.assert_array_equal(loaded[0], [[255, 0, 0], [255, 255, 255]])
    loaded = load_image(_save(palette, tmp_path / "p_transparent.gif", transparency=1))
    np.testing.assert_array_equal(loaded[0], [[255, 0, 0], [255, 255, 255]])


def test_cmyk(tmp_path: Path) -> None:
    cyan = Image.new("CMYK", (4, 3), (255, 0, 0, 0))
    loaded = load_image(_save(cyan, tmp_path / "cmyk.tif"))
    assert loaded.shape == (3, 4, 3)
    np.testing.assert_array_equal(loaded[0, 0], [0, 255, 255])
    loaded = load_image(_save(cyan, tmp_path / "cmyk.jpg", quality=95))
    assert np.abs(loaded[1, 1].astype(int) - [0, 255, 255]).max() <= 3


def test_sixteen_bit(tmp_path: Path) -> None:
    values = np.array([[0, 65535], [257 * 128, 1000]], np.uint16)
    path = _save(Image.fromarray(values), tmp_path / "deep.png")
    assert Image.open(path).mode.startswith("I")
    loaded = load_image(path)
    np.testing.assert_array_equal(loaded[:, :, 0], [[0, 255], [128, 4]])
    big_endian = Image.frombytes("I;16B", (2, 1), struct.pack(">HH", 0, 65535))
    np.testing.assert_array_equal(load_image(big_endian)[0, :, 1], [0, 255])
    np.testing.assert_array_equal(load_image(values)[:, :, 2], [[0, 255], [128, 4]])


def test_int32_and_float_images(tmp_path: Path) -> None:
    sixteen_in_int = Image.fromarray(np.array([[0, 65535]], np.int32))
    assert sixteen_in_int.mode == "I"
    np.testing.assert_array_equal(load_image(sixteen_in_int)[0, :, 0], [0, 255])
    signed = Image.fromarray(np.array([[-100, 100]], np.int32))
    np.testing.assert_array_equal(load_image(signed)[0, :, 0], [0, 255])
    unit = Image.fromarray(np.array([[0.0, 0.5, 1.0]], np.float32))
    loaded = load_image(_save(unit, tmp_path / "float.tif"))
    np.testing.assert_array_equal(loaded[0, :, 0], [0, 128, 255])
    wide = Image.fromarray(np.array([[-1.0, 0.0, 3.0]], np.float32))
    np.testing.assert_array_equal(load_image(wide)[0, :, 0], [0, 64, 255])


def _photo_with_orientation(orientation: int) -> bytes:
    """A 60x40 (w x h) JPEG, red block at the stored top-left, with EXIF orientation ``orientation``."""
    pixels = np.full((40, 60, 3), 128, np.uint8)
    pixels[:10, :10] = (255, 0, 0)
    exif = Image.Exif()
    exif[0x0112] = orientation
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=95, exif=exif)
    return buffer.getvalue()


def _is_red(patch: np.ndarray) -> bool:
    mean = patch.reshape(-1, 3).mean(axis=0)
    return mean[0] > 200 and mean[1] < 60 and mean[2] < 60


def test_exif_orientation_6_rotates_to_displayed(tmp_path: Path) -> None:
    """Orientation 6: displayed = stored rotated 90 degrees clockwise, so the red corner is top-right."""
    path = tmp_path / "photo.jpg"
    path.write_bytes(_photo_with_orientation(6))
    assert Image.open(path).size == (60, 40)
    for source in (path, path.read_bytes(), Image.open(path)):
        loaded = load_image(source)
        assert loaded.shape == (60, 40, 3)
        assert _is_red(loaded[2:8, 32:38])
        assert not _is_red(loaded[2:8, 2:8]) and not _is_red(loaded[52:58, 32:38])
    assert check_image_limits(path) == (40, 60)


def test_exif_orientation_3_rotates_half_turn() -> None:
    loaded = load_image(_photo_with_orientation(3))
    assert loaded.shape == (40, 60, 3)
    assert _is_red(loaded[32:38, 52:58]) and not _is_red(loaded[2:8, 2:8])


def test_animated_gif_gives_first_frame(tmp_path: Path) -> None:
    frames = [Image.new("RGB", (5, 4), colour) for colour in ((255, 0, 0), (0, 0, 255))]
    path = tmp_path / "anim.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:])
    loaded = load_image(path)
    assert loaded.shape == (4, 5, 3)
    np.testing.assert_array_equal(loaded[0, 0], [255, 0, 0])


def test_numpy_inputs() -> None:
    grey = np.array([[0, 255]], np.uint8)
    np.testing.assert_array_equal(load_image(grey)[0], [[0, 0, 0], [255, 255, 255]])
    np.testing.assert_array_equal(load_image(grey[:, :, None])[0, 1], [255, 255, 255])
    np.testing.assert_array_equal(load_image(np.array([[True, False]]))[0, :, 0], [255, 0])
    np.testing.assert_array_equal(load_image(np.array([[0.0, 1.0]]))[0, :, 0], [0, 255])
    np.testing.assert_array_equal(load_image(np.array([[3, 200]]))[0, :, 0], [3, 200])
    with pytest.raises(ImageLoadError, match=r"float arrays must hold finite values in \[0, 1\]"):
        load_image(np.array([[0.0, 2.0]]))
    with pytest.raises(ImageLoadError, match=r"values in \[0, 255\]"):
        load_image(np.array([[0, 300]]))
    with pytest.raises(ImageLoadError, match=r"expected an array of shape"):
        load_image(np.zeros((4, 4, 2), np.uint8))
    with pytest.raises(ImageLoadError, match="no pixels"):
        load_image(np.zeros((0, 4, 3), np.uint8))
