"""Load user images robustly into ``[H, W, 3]`` uint8 RGB arrays.

Every failure raises ``ImageLoadError`` (a ``ValueError``) whose message names the source, what is wrong
and what is accepted. Conversion rules, applied after ``ImageOps.exif_transpose`` (so the array, and
the masks predicted on it, follow the orientation a viewer displays):

- alpha (RGBA, LA, PA, RGBa, La, and P/L/RGB with a transparency entry), ``ImageLoadConfig.alpha``:
  "white" (the default of our models) composites onto white: transparent pixels often hold arbitrary
  colours (usually black) that the user never sees, and white is what a viewer on a light page shows;
  "drop" discards the alpha channel and keeps the stored colours, as the original PixelLM's ``cv2.imread``
  did (what a converted release folder's ``preprocessor_config.json`` asks for);
- 1-bit, L, P, CMYK, YCbCr, RGBX: Pillow's conversion to RGB;
- 16-bit grey (I;16, I;16B, I;16L, I;16N): divided by 257 (65535 -> 255);
- 32-bit int (I): divided by 257 when every value lies in [0, 65535] (a 16-bit image opened as I),
  otherwise stretched min..max -> 0..255;
- float (F): multiplied by 255 when every value lies in [0, 1], otherwise stretched min..max -> 0..255;
  NaN becomes 0;
- multi-frame files (GIF, TIFF): the first frame.

Truncated files are detected because Pillow's ``ImageFile.LOAD_TRUNCATED_IMAGES`` is False by default;
code that sets it to True makes Pillow fill the missing part with grey instead.
"""

from __future__ import annotations

import io
import os
import struct
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from model.processing_pixellm import ALPHA_MODES

ImageSource = str | os.PathLike | bytes | bytearray | Image.Image | np.ndarray

# What Pillow raises on malformed data while parsing or decoding (beyond its documented OSError).
_DECODE_ERRORS = (
    OSError, ValueError, SyntaxError, EOFError, struct.error, IndexError, KeyError, TypeError, MemoryError
)


class ImageLoadError(ValueError):
    """An image could not be loaded; the message names the source, the problem and what is accepted."""


class ImageTooLargeError(ImageLoadError):
    """The image is over a byte or pixel limit, or a possible decompression bomb (a server answers 413)."""


@dataclass(frozen=True)
class ImageLoadConfig:
    """Limits for untrusted images.

    max_pixels: largest width * height accepted (decompression-bomb guard). Pillow's own guard
        (``PIL.Image.MAX_IMAGE_PIXELS``, 89.5 MP by default) still rejects larger images.
    max_bytes: largest encoded size accepted for paths and bytes; None disables the check. The default
        (128 MiB) admits an uncompressed 40 MP RGB file, so only the pixel limit binds for real images.
    formats: Pillow format names tried when opening; others (EPS, which runs Ghostscript, etc.) are refused.
        "JPEG" covers multi-picture JPEGs from phones, which Pillow reports as format "MPO".
    alpha: "white" (composite transparent pixels onto white) or "drop" (keep the stored colours); None: the
        model folder's ``preprocessor_config.json`` setting where a predictor loads the image, else "white".
    """

    max_pixels: int = 40_000_000
    max_bytes: int | None = 128 * 2**20
    formats: tuple[str, ...] = ("PNG", "JPEG", "WEBP", "BMP", "GIF", "TIFF")
    alpha: str | None = None

    def __post_init__(self) -> None:
        if self.alpha is not None and self.alpha not in ALPHA_MODES:
            raise ValueError(f"ImageLoadConfig.alpha must be one of {ALPHA_MODES}, got {self.alpha!r}")
        if self.max_pixels <= 0:
            raise ValueError(f"ImageLoadConfig.max_pixels must be positive, got {self.max_pixels}")
        if self.max_bytes is not None and self.max_bytes <= 0:
            raise ValueError(f"ImageLoadConfig.max_bytes must be positive or None, got {self.max_bytes}")
        if not self.formats:
            raise ValueError("ImageLoadConfig.formats must name at least one Pillow format, e.g. ('PNG', 'JPEG')")
        Image.init()
        unknown = [name for name in self.formats if name.upper() not in Image.OPEN]
        if unknown:
            raise ValueError(f"ImageLoadConfig.formats: Pillow cannot open {unknown}; known: {sorted(Image.OPEN)}")


def load_image(source: ImageSource, config: ImageLoadConfig | None = None) -> np.ndarray:
    """Load ``source`` (a path, encoded bytes, a PIL image or a numpy array) as RGB.

    Numpy arrays are taken as RGB(A) or grey: [H, W], [H, W, 1], [H, W, 3] or [H, W, 4] of dtype uint8,
    bool, uint16 (divided by 257), another integer type with values in [0, 255], or float in [0, 1].

    Returns: [H, W, 3] uint8 RGB, a new C-contiguous array. Raises ``ImageLoadError``.
    """
    config = config or ImageLoadConfig()
    name = _describe(source)
    if isinstance(source, np.ndarray):
        return _array_to_rgb(source, name, config)
    with _catch_bomb_warning():
        if isinstance(source, Image.Image):
            return _decode(source, name, config)
        with _opened(source, name, config) as image:
            return _decode(image, name, config)


def check_image_limits(source: ImageSource, config: ImageLoadConfig | None = None) -> tuple[int, int]:
    """Check the byte size and the pixel count of ``source`` without decoding the pixels.

    For paths and bytes only the header is read. Returns (height, width) as stored (before any EXIF
    rotation). Raises ``ImageLoadError`` when a limit of ``config`` is exceeded or the header is unreadable.
    """
    config = config or ImageLoadConfig()
    name = _describe(source)
    if isinstance(source, np.ndarray):
        if source.ndim not in (2, 3):
            raise ImageLoadError(f"{name}: expected an array of shape [H, W] or [H, W, C], got {source.shape}")
        height, width = source.shape[:2]
    elif isinstance(source, Image.Image):
        width, height = source.size
    else:
        with _catch_bomb_warning(), _opened(source, name, config) as image:
            width, height = image.size
    _check_pixels(width, height, name, config)
    return height, width


def require_rgb_image(image: object, what: str = "image_rgb") -> np.ndarray:
    """Return ``image`` if it is a [H, W, 3] uint8 array; raise ``ValueError`` naming ``what`` otherwise."""
    if isinstance(image, np.ndarray) and image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3:
        return image
    found = f"{image.dtype} {image.shape}" if isinstance(image, np.ndarray) else type(image).__name__
    raise ValueError(f"{what} must be a uint8 array [H, W, 3] (serving.image_io.load_image gives one), got {found}")


def _describe(source: object) -> str:
    """A short name for messages: the path, or the kind and size of an in-memory source."""
    if isinstance(source, (str, os.PathLike)):
        return f"image file '{os.fspath(source)}'"
    if isinstance(source, (bytes, bytearray)):
        return f"image data ({len(source)} bytes)"
    if isinstance(source, Image.Image):
        filename = getattr(source, "filename", "")
        return f"image file '{filename}'" if filename else f"PIL image ({source.mode}, {source.width}x{source.height})"
    if isinstance(source, np.ndarray):
        return f"image array ({source.dtype}, shape {source.shape})"
    return f"image source of type {type(source).__name__}"


def _accepted(config: ImageLoadConfig) -> str:
    limits = f"at most {config.max_pixels / 1e6:g} megapixels"
    if config.max_bytes is not None:
        limits += f" and {config.max_bytes / 2**20:g} MiB"
    return f"Accepted: {', '.join(config.formats)} files ({limits}), a PIL image or an RGB numpy array."


def _check_pixels(width: int, height: int, name: str, config: ImageLoadConfig) -> None:
    if width <= 0 or height <= 0:
        raise ImageLoadError(f"{name}: the image has no pixels ({width}x{height}). {_accepted(config)}")
    if width * height > config.max_pixels:
        raise ImageTooLargeError(
            f"{name}: the image is {width}x{height} = {width * height / 1e6:.1f} megapixels, over the pixel "
            f"limit of {config.max_pixels / 1e6:g} megapixels (ImageLoadConfig.max_pixels; a guard against "
            f"decompression bombs). Downscale the image first."
        )


@contextmanager
def _catch_bomb_warning() -> Iterator[None]:
    """Turn Pillow's DecompressionBombWarning into an exception so it is reported, not printed."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        yield


@contextmanager
def _opened(source: object, name: str, config: ImageLoadConfig) -> Iterator[Image.Image]:
    """Open a path or bytes lazily (header only) after the byte-size checks; yields the open image."""
    if isinstance(source, (str, os.PathLike)):
        path = os.fspath(source)
        if not os.path.exists(path):
            raise ImageLoadError(f"{name}: no such file. Check the path.")
        if os.path.isdir(path):
            raise ImageLoadError(f"{name}: is a directory, not an image file.")
        num_bytes = os.path.getsize(path)
        fp: str | io.BytesIO = path
    elif isinstance(source, (bytes, bytearray)):
        num_bytes = len(source)
        fp = io.BytesIO(bytes(source))
    else:
        raise ImageLoadError(
            f"{name}: unsupported source type. Pass a path, bytes, a PIL image or a numpy array. {_accepted(config)}"
        )
    if num_bytes == 0:
        raise ImageLoadError(f"{name}: the file is empty (0 bytes). {_accepted(config)}")
    if config.max_bytes is not None and num_bytes > config.max_bytes:
        raise ImageTooLargeError(
            f"{name}: the file is {num_bytes / 2**20:.1f} MiB, over the size limit of {config.max_bytes / 2**20:g} "
            f"MiB (ImageLoadConfig.max_bytes). Use a smaller or more compressed image."
        )
    try:
        image = Image.open(fp, formats=list(config.formats))
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise _bomb_error(name, exc, config) from exc
    except UnidentifiedImageError as exc:
        raise ImageLoadError(
            f"{name}: not a readable image (unknown or refused format, or a corrupt header). {_accepted(config)}"
        ) from exc
    except PermissionError as exc:
        raise ImageLoadError(f"{name}: permission denied ({exc}).") from exc
    except _DECODE_ERRORS as exc:
        raise ImageLoadError(
            f"{name}: the image header is corrupt ({type(exc).__name__}: {exc}). {_accepted(config)}"
        ) from exc
    with image:
        _check_pixels(image.width, image.height, name, config)
        yield image


def _bomb_error(name: str, exc: Exception, config: ImageLoadConfig) -> ImageLoadError:
    return ImageTooLargeError(
        f"{name}: rejected as a possible decompression bomb: its header claims more pixels than allowed "
        f"(pixel limit {config.max_pixels / 1e6:g} megapixels, ImageLoadConfig.max_pixels; Pillow says: {exc}). "
        f"Downscale the image first."
    )


def _decode(image: Image.Image, name: str, config: ImageLoadConfig) -> np.ndarray:
    """Decode, apply the EXIF orientation and convert a PIL image; [H, W, 3] uint8."""
    _check_pixels(image.width, image.height, name, config)
    fmt = image.format or "image"
    try:
        image.load()
    except ImageLoadError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise _bomb_error(name, exc, config) from exc
    except _DECODE_ERRORS as exc:
        raise ImageLoadError(
            f"{name}: the {fmt} data is truncated or corrupt ({type(exc).__name__}: {exc}). "
            f"Re-export or re-download the file."
        ) from exc
    try:
        oriented = ImageOps.exif_transpose(image)
    except _DECODE_ERRORS as exc:
        # A broken EXIF block should not make a displayable photo unusable; viewers ignore it too.
        warnings.warn(f"{name}: EXIF orientation ignored, it could not be read ({exc})", stacklevel=3)
        oriented = image
    try:
        return _pil_to_rgb(oriented, config.alpha)
    except _DECODE_ERRORS as exc:
        raise ImageLoadError(
            f"{name}: cannot convert Pillow mode '{oriented.mode}' to RGB ({exc}). {_accepted(config)}"
        ) from exc


def _pil_to_rgb(image: Image.Image, alpha: str | None) -> np.ndarray:
    """A decoded PIL image of any mode -> [H, W, 3] uint8 RGB (rules in the module docstring)."""
    mode = image.mode
    if mode.startswith("I;16"):
        grey = _scale_to_uint8(np.asarray(image).astype(np.float64), assume_max=65535.0)
        return _grey_to_rgb(grey)
    if mode == "I":
        values = np.asarray(image).astype(np.float64)
        in_16bit = values.size == 0 or (values.min() >= 0 and values.max() <= 65535)
        return _grey_to_rgb(_scale_to_uint8(values, assume_max=65535.0 if in_16bit else None))
    if mode == "F":
        values = np.nan_to_num(np.asarray(image).astype(np.float64), nan=0.0)
        in_unit = values.size == 0 or (values.min() >= 0 and values.max() <= 1)
        return _grey_to_rgb(_scale_to_uint8(values, assume_max=1.0 if in_unit else None))
    if image.has_transparency_data and alpha != "drop":
        return _composite_on_white(np.asarray(image.convert("RGBA")))
    return np.ascontiguousarray(np.asarray(image.convert("RGB"), dtype=np.uint8))


def _scale_to_uint8(values: np.ndarray, assume_max: float | None) -> np.ndarray:
    """[H, W] float -> uint8: ``values / assume_max * 255``, or a min..max stretch when ``assume_max`` is None."""
    if assume_max is None:
        finite = values[np.isfinite(values)]
        low, high = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 0.0)
        if high == low:
            return np.full(values.shape, np.clip(low, 0, 255), dtype=np.uint8)
        values, assume_max = values - low, high - low
    scaled = np.clip(values, 0, assume_max) * (255.0 / assume_max)
    return np.rint(scaled).astype(np.uint8)


def _grey_to_rgb(grey: np.ndarray) -> np.ndarray:
    """[H, W] uint8 -> [H, W, 3] uint8."""
    return np.ascontiguousarray(np.repeat(grey[:, :, None], 3, axis=2))


def _composite_on_white(rgba: np.ndarray) -> np.ndarray:
    """[H, W, 4] uint8 -> [H, W, 3] uint8, alpha-blended over a white background."""
    rgb = rgba[:, :, :3].astype(np.uint32)
    alpha = rgba[:, :, 3:4].astype(np.uint32)
    blended = (rgb * alpha + 255 * (255 - alpha) + 127) // 255
    return np.ascontiguousarray(blended.astype(np.uint8))


def _array_to_rgb(array: np.ndarray, name: str, config: ImageLoadConfig) -> np.ndarray:
    """A numpy image (shapes and dtypes in ``load_image``) -> [H, W, 3] uint8 RGB."""
    accepted_shapes = "[H, W], [H, W, 1], [H, W, 3] (RGB) or [H, W, 4] (RGBA)"
    if array.ndim == 2:
        array = array[:, :, None]
    if array.ndim != 3 or array.shape[2] not in (1, 3, 4):
        raise ImageLoadError(f"{name}: expected an array of shape {accepted_shapes}.")
    _check_pixels(array.shape[1], array.shape[0], name, config)
    pixels = _array_to_uint8(array, name)
    if pixels.shape[2] == 1:
        return _grey_to_rgb(pixels[:, :, 0])
    if pixels.shape[2] == 4:
        return np.ascontiguousarray(pixels[:, :, :3]) if config.alpha == "drop" else _composite_on_white(pixels)
    return np.ascontiguousarray(pixels, dtype=np.uint8).copy()


def _array_to_uint8(array: np.ndarray, name: str) -> np.ndarray:
    """Any accepted dtype -> uint8 with the same shape."""
    if array.dtype == np.uint8:
        return array
    if array.dtype == np.bool_:
        return array.astype(np.uint8) * 255
    if array.dtype == np.uint16:
        return _scale_to_uint8(array.astype(np.float64), assume_max=65535.0)
    if np.issubdtype(array.dtype, np.floating):
        if not np.all(np.isfinite(array)) or (array.size and (array.min() < 0 or array.max() > 1)):
            raise ImageLoadError(
                f"{name}: float arrays must hold finite values in [0, 1]; convert to uint8 (0..255) otherwise."
            )
        return np.rint(array.astype(np.float64) * 255.0).astype(np.uint8)
    if np.issubdtype(array.dtype, np.integer):
        if array.size and (array.min() < 0 or array.max() > 255):
            raise ImageLoadError(
                f"{name}: integer arrays other than uint16 must hold values in [0, 255]; got "
                f"{array.min()}..{array.max()}."
            )
        return array.astype(np.uint8)
    raise ImageLoadError(f"{name}: unsupported dtype {array.dtype}; use uint8, uint16, bool or float in [0, 1].")
