"""Decode image files (TIFF, JPEG, PNG, WebP, anything Pillow reads) into uint8 RGB arrays.

Every failure is a :class:`~tfduch.errors.DataError` that names the file and the reason, so a single
bad image in a 10,000-image archive is found from the message alone.
"""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from tfduch.errors import DataError

__all__ = ["load_image", "load_image_bytes", "to_rgb_uint8"]

Size = int | tuple[int, int]


def load_image(path: str | os.PathLike[str], size: Size | None = None) -> np.ndarray:
    """Read an image file as ``uint8 [H, W, 3]`` RGB.

    Grayscale, palette, RGBA (alpha dropped), CMYK and 16-bit images are converted to 8-bit RGB.
    ``size`` (``S`` or ``(H, W)``) optionally resizes with Pillow's bilinear filter, which makes
    slightly off-size images (44 of UC Merced's) batchable.
    """
    path = Path(path)
    if not path.exists():
        raise DataError(f"image file not found: {path}")
    if not path.is_file():
        raise DataError(f"image path is not a file: {path}")
    if path.stat().st_size == 0:
        raise DataError(f"image file is empty (0 bytes): {path}")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DataError(f"cannot read image file {path}: {exc}") from exc
    return load_image_bytes(data, name=str(path), size=size)


def load_image_bytes(data: bytes, name: str = "<bytes>", size: Size | None = None) -> np.ndarray:
    """Decode encoded image bytes as ``uint8 [H, W, 3]`` RGB; ``name`` is used in error messages."""
    if len(data) == 0:
        raise DataError(f"image file is empty (0 bytes): {name}")
    try:
        with warnings.catch_warnings():
            # Pillow warns (rather than fails) on some damaged files; treat those as errors.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as img:
                img.load()  # Image.open is lazy: force the full decode so truncation is caught here.
                rgb = _pil_to_rgb(img)
                if size is not None:
                    rgb = _resize(rgb, size)
    except DataError:
        raise
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError, Warning) as exc:
        # UnidentifiedImageError is an OSError; TIFFs Pillow cannot read get a second chance.
        rgb = _try_tifffile(data, name, exc)
        if size is not None:
            rgb = _resize(rgb, size)
    return rgb


def to_rgb_uint8(array: np.ndarray, name: str = "<array>") -> np.ndarray:
    """Convert a decoded ``[H, W]`` / ``[H, W, C]`` (channels last) array to ``uint8 [H, W, 3]``.

    One channel is repeated, two (gray + alpha) use the first, more than three keep the first three.

    8-bit data is kept as is; uint16 is scaled by 255/65535; other integers are kept if within
    0..255, else treated as 16-bit if within 0..65535; floats in [0, 1] are scaled by 255; anything
    else is min-max scaled (there is no meaningful fixed range to assume).
    """
    arr = np.asarray(array)
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.ndim != 3 or arr.shape[0] == 0 or arr.shape[1] == 0:
        raise DataError(f"image has unsupported shape {array.shape}: {name}")
    channels = arr.shape[-1]
    if channels == 1:
        arr = np.repeat(arr, 3, axis=-1)
    elif channels == 2:  # gray + alpha
        arr = np.repeat(arr[..., :1], 3, axis=-1)
    else:
        arr = arr[..., :3]  # drop alpha / extra bands
    return _scale_to_uint8(arr, name)


def _scale_to_uint8(arr: np.ndarray, name: str) -> np.ndarray:
    if arr.dtype == np.uint8:
        return np.ascontiguousarray(arr)
    if arr.dtype == np.bool_:
        return arr.astype(np.uint8) * 255
    if arr.dtype == np.uint16:  # a 16-bit image: scale by the type's range, however dark it is
        return np.round(arr.astype(np.float64) * (255.0 / 65535.0)).astype(np.uint8)
    if np.issubdtype(arr.dtype, np.integer):  # e.g. Pillow's 32-bit "I" mode: infer the range
        lo, hi = int(arr.min()), int(arr.max())
        if lo >= 0 and hi <= 255:
            return arr.astype(np.uint8)
        if lo >= 0 and hi <= 65535:
            return np.round(arr.astype(np.float64) * (255.0 / 65535.0)).astype(np.uint8)
        return _minmax(arr.astype(np.float64))
    if np.issubdtype(arr.dtype, np.floating):
        a = arr.astype(np.float64)
        if not np.all(np.isfinite(a)):
            raise DataError(f"image has NaN or infinite pixel values: {name}")
        if a.min() >= 0.0 and a.max() <= 1.0:
            return np.round(a * 255.0).astype(np.uint8)
        return _minmax(a)
    raise DataError(f"image has unsupported pixel type {arr.dtype}: {name}")


def _minmax(a: np.ndarray) -> np.ndarray:
    lo, hi = float(a.min()), float(a.max())
    if hi <= lo:
        return np.zeros(a.shape, np.uint8)
    return np.round((a - lo) * (255.0 / (hi - lo))).astype(np.uint8)


def _pil_to_rgb(img: Image.Image) -> np.ndarray:
    mode = img.mode
    if mode == "RGB":
        return np.asarray(img, dtype=np.uint8).copy()
    if mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
        return np.asarray(img.convert("RGB"), dtype=np.uint8).copy()
    if mode in ("1", "L", "LA", "La", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr", "LAB", "HSV", "PA"):
        return np.asarray(img.convert("RGB"), dtype=np.uint8).copy()
    # 16/32-bit integer and float modes ("I;16", "I;16B", "I", "F", ...): Pillow's own conversion
    # clips instead of scaling, so scale in numpy.
    return to_rgb_uint8(np.asarray(img))


def _try_tifffile(data: bytes, name: str, pil_error: BaseException) -> np.ndarray:
    """Fall back to ``tifffile`` (if installed) for TIFFs Pillow cannot decode (e.g. 16-bit RGB)."""
    if data[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        try:
            import tifffile  # optional
        except ImportError:
            tifffile = None
        if tifffile is not None:
            try:
                return to_rgb_uint8(_read_tiff(tifffile, data), name)
            except DataError:
                raise
            except Exception:  # report Pillow's error below: Pillow is the primary decoder
                pass
    if isinstance(pil_error, UnidentifiedImageError):
        raise DataError(f"not a readable image (unknown or corrupt format): {name}") from pil_error
    reason = str(pil_error) or type(pil_error).__name__
    raise DataError(f"corrupt or truncated image ({reason}): {name}") from pil_error


def _read_tiff(tifffile: Any, data: bytes) -> np.ndarray:
    """First image of a TIFF as ``[H, W]`` or ``[H, W, C]``, using the file's axes (planar or not)."""
    with tifffile.TiffFile(io.BytesIO(data)) as tif:
        series = tif.series[0]
        arr, axes = series.asarray(), series.axes
    while arr.ndim > 2 and axes and axes[0] not in "YXSC":  # pages / time / z: take the first
        arr, axes = arr[0], axes[1:]
    if arr.ndim == 3 and axes[0] in "SC":  # planar (C, H, W)
        arr = np.moveaxis(arr, 0, -1)
    return arr


def _resize(rgb: np.ndarray, size: Size) -> np.ndarray:
    h, w = (size, size) if isinstance(size, int) else size
    if rgb.shape[:2] == (h, w):
        return rgb
    return np.asarray(Image.fromarray(rgb).resize((w, h), Image.BILINEAR), dtype=np.uint8)
