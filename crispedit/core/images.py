"""Decoding untrusted image files into clean RGB arrays, and encoding arrays for shards.

Every way a file can be bad raises ImageRejected with a short reason, so the source turns
it into a reject row instead of a crash; every odd-but-valid file (CMYK, 16-bit, alpha,
palette, EXIF-rotated) is converted faithfully instead of being refused or mangled.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

#: Refuse anything with more pixels than this before decoding it (a 16k x 16k image).
DEFAULT_MAX_PIXELS = 16384 * 16384


class ImageRejected(ValueError):
    """A file that cannot become a sample. ``reason`` is the short category for stats."""

    def __init__(self, reason: str, detail: str = "") -> None:
        self.reason = reason
        super().__init__(f"{reason}: {detail}" if detail else reason)


def read_image(path: Path, max_pixels: int = DEFAULT_MAX_PIXELS, background: int = 255,
               max_bytes: int | None = None) -> tuple[np.ndarray, list[str]]:
    """Read a file as an HxWx3 uint8 RGB array; also say which conversions were applied.

    A device, a FIFO, or a file over ``max_bytes`` is refused before it is read.
    """
    from crispedit.core.storage import DEFAULT_MAX_BYTES, InputRefused, read_input

    try:
        data = read_input(path, max_bytes or DEFAULT_MAX_BYTES)
    except InputRefused as refused:
        reason, _, detail = str(refused).partition(": ")
        raise ImageRejected(reason, detail) from None
    except OSError as error:
        raise ImageRejected("unreadable file", str(error)) from None
    return decode_image(data, max_pixels=max_pixels, background=background)


def decode_image(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS, background: int = 255) -> tuple[np.ndarray, list[str]]:
    """Decode bytes to RGB uint8, checking the size from the header before any pixel is decoded."""
    image, notes = decode_pil(data, max_pixels, background)
    return np.asarray(image), notes


def decode_pil(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS, background: int = 255) -> tuple[Image.Image, list[str]]:
    """:func:`decode_image`'s checks and conversions, returning the RGB PIL image itself, for callers
    that go on in PIL (the trainer's crop) and would otherwise pay an array round trip."""
    if not data:
        raise ImageRejected("empty file", "0 bytes")
    notes: list[str] = []
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            image = Image.open(io.BytesIO(data))
        except UnidentifiedImageError:
            kind = _claimed_format(data)
            if kind:
                raise ImageRejected("corrupt image", f"starts like {kind} but cannot be parsed") from None
            raise ImageRejected("not an image", "no known image format") from None
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
            raise ImageRejected("image too large", str(error)) from None
        except Exception as error:
            raise ImageRejected("corrupt image", str(error)) from None
        width, height = image.size
        if width * height > max_pixels:
            raise ImageRejected("image too large", f"{width}x{height} exceeds {max_pixels} pixels")
        if width == 0 or height == 0:
            raise ImageRejected("corrupt image", f"size {width}x{height}")
        try:
            image.load()
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
            raise ImageRejected("image too large", str(error)) from None
        except Exception as error:  # truncated files raise OSError, broken ones SyntaxError etc.
            raise ImageRejected("corrupt image", str(error)) from None
    try:
        orientation = image.getexif().get(0x0112, 1)
    except Exception:  # unreadable EXIF is not a reason to lose the picture
        orientation = 1
    if orientation not in (1, None):
        image = ImageOps.exif_transpose(image)
        notes.append(f"exif-rotated (orientation {orientation})")
    return _to_rgb(image, notes, background), notes


_SIGNATURES = {
    b"\x89PNG\r\n\x1a\n": "PNG",
    b"\xff\xd8\xff": "JPEG",
    b"GIF87a": "GIF",
    b"GIF89a": "GIF",
    b"BM": "BMP",
    b"II*\x00": "TIFF",
    b"MM\x00*": "TIFF",
}


def _claimed_format(data: bytes) -> str | None:
    """The format a file's magic bytes claim, to tell a broken image from a non-image."""
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    return next((kind for magic, kind in _SIGNATURES.items() if data.startswith(magic)), None)


def _to_rgb(image: Image.Image, notes: list[str], background: int) -> Image.Image:
    mode = image.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        # PIL's own I;16 -> L conversion clips at 255; scale the real range instead.
        array = np.asarray(image, dtype=np.float64)
        top = 65535.0 if mode.startswith("I;16") or array.max() > 255 else 255.0
        gray = np.clip(np.round(array * (255.0 / top)), 0, 255).astype(np.uint8)
        notes.append(f"converted from {mode}")
        return Image.fromarray(np.repeat(gray[:, :, None], 3, axis=2))
    if mode == "F":
        array = np.asarray(image, dtype=np.float64)
        lo, hi = float(array.min()), float(array.max())
        gray = np.zeros(array.shape, np.uint8) if hi <= lo else np.round((array - lo) * (255.0 / (hi - lo))).astype(np.uint8)
        notes.append("converted from F")
        return Image.fromarray(np.repeat(gray[:, :, None], 3, axis=2))
    has_alpha = mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in image.info)
    if has_alpha:
        rgba = image.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, (background, background, background, 255))
        canvas.alpha_composite(rgba)
        notes.append(f"alpha composited on {background}")
        return canvas.convert("RGB")
    if mode != "RGB":
        notes.append(f"converted from {mode}")
    return image.convert("RGB") if mode != "RGB" else image


def fit_within(image: np.ndarray, max_side: int | None, multiple: int = 1) -> np.ndarray:
    """Downscale so the long side is at most ``max_side`` (never upscale); sides rounded down to ``multiple``."""
    height, width = image.shape[:2]
    scale = 1.0 if not max_side else min(1.0, max_side / max(height, width))
    new_w = max(multiple, int(width * scale) // multiple * multiple)
    new_h = max(multiple, int(height * scale) // multiple * multiple)
    if (new_w, new_h) == (width, height):
        return image
    interpolation = cv2.INTER_AREA if scale < 1.0 else cv2.INTER_LINEAR
    return cv2.resize(image, (new_w, new_h), interpolation=interpolation)


def encode_image(image: np.ndarray, fmt: str = "png", quality: int = 95, png_compression: int = 3) -> bytes:
    """Encode an RGB (HxWx3) or gray (HxW) uint8 array. OpenCV is several times faster than PIL here."""
    if image.dtype != np.uint8:
        raise TypeError(f"images are uint8, got {image.dtype}")
    bgr = cv2.cvtColor(image, cv2.COLOR_RGB2BGR) if image.ndim == 3 else image
    if fmt == "png":
        ok, buf = cv2.imencode(".png", bgr, [cv2.IMWRITE_PNG_COMPRESSION, png_compression])
    elif fmt == "webp":
        # quality 101 is libwebp's lossless mode; keep lossy when asked for less than 100.
        ok, buf = cv2.imencode(".webp", bgr, [cv2.IMWRITE_WEBP_QUALITY, 101 if quality >= 100 else quality])
    elif fmt == "jpeg":
        ok, buf = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, quality])
    else:
        raise ValueError(f"unknown image format {fmt!r}")
    if not ok:
        raise ValueError(f"could not encode a {image.shape} image as {fmt}")
    return buf.tobytes()


def pixel_l1(source: np.ndarray, target: np.ndarray) -> float:
    """Mean absolute difference over RGB on [0, 1], computed signed (AnyEdit's uint8 subtraction wraps around).

    The ``pixel_change`` filter's score and ``crispedit eval``'s L1, so both measure the same thing.
    """
    if source.shape != target.shape:
        raise ValueError(f"source {source.shape} and target {target.shape} differ in shape")
    return float(np.abs(source.astype(np.int16) - target.astype(np.int16)).mean() / 255.0)
