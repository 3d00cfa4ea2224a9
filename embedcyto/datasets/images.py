"""Decoding any image a cytology dataset may hold into an 8-bit RGB PIL image.

Why one function: every backbone expects RGB, but datasets contain grayscale scans, palette
PNGs, RGBA exports, 16-bit microscope TIFFs and phone photos with an EXIF rotation. Converting
each of them the right way in one place means every stage sees the same pixels.

Truncated or corrupt files must fail loudly: embedcyto never sets PIL's
``ImageFile.LOAD_TRUNCATED_IMAGES`` (which would silently fill the missing part with grey) and
always forces the full decode inside :func:`read_image`.

Huge files are refused from their header, before any pixel is decoded: an image above
:data:`MAX_PIXELS` is an :class:`ImageReadError` that says its size and the fix. PIL's own
``DecompressionBombWarning`` (printed with a source line, like a traceback) is silenced while
embedcyto opens a file, since the refusal replaces it; the warning filter is changed only
around ``Image.open`` and under a lock, as :class:`warnings.catch_warnings` is not thread-safe.
"""

from __future__ import annotations

import os
import threading
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from embedcyto.errors import ImageReadError

_SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N", "I")
_ALPHA = ("RGBA", "LA", "PA", "RGBa", "La")

#: The most pixels embedcyto decodes from one image: PIL's decompression-bomb threshold
#: (about 89 megapixels, a 9460x9460 image). Cytology crops are far smaller, and every backbone
#: sees 224 to 448 pixels a side, so a larger file is a whole slide or a mistake.
MAX_PIXELS = 89_478_485
_OPEN_LOCK = threading.Lock()


def _to_8bit(img: Image.Image) -> Image.Image:
    """Map 16/32-bit integer or float grayscale onto 0..255.

    Integer data is treated as 16-bit (``value / 257``: 65535 -> 255) when any value exceeds
    255, else kept as is, so the brightness of a scan is not re-stretched per image.
    Float data in 0..1 is scaled by 255; other float data is clipped to 0..255.
    """
    arr = np.asarray(img)
    if img.mode == "F":
        arr = arr * 255.0 if arr.size and float(np.nanmax(arr)) <= 1.0 else arr
    elif arr.size and int(arr.max()) > 255:
        arr = arr.astype(np.float64) / 257.0
    arr = np.clip(np.nan_to_num(arr.astype(np.float64)), 0, 255)
    return Image.fromarray(np.rint(arr).astype(np.uint8), mode="L")


def _on_white(img: Image.Image) -> Image.Image:
    """Composite an image with transparency on white (slide background), not on black."""
    rgba = img.convert("RGBA")
    background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(background, rgba).convert("RGB")


def to_rgb(img: Image.Image) -> Image.Image:
    """Convert a decoded image of any mode to 8-bit RGB (see module docstring)."""
    if img.mode in _SIXTEEN_BIT or img.mode == "F":
        img = _to_8bit(img)
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in _ALPHA:
        return _on_white(img)
    if img.mode == "RGB":
        return img
    return img.convert("RGB")


def read_image(path: str | os.PathLike, *, target_size: int | None = None) -> Image.Image:
    """Read an image file as an 8-bit RGB PIL image, rotated as its EXIF says.

    Args:
        path: the image file.
        target_size: the smallest side the caller needs. Large JPEGs are then decoded at a
            reduced scale (PIL ``draft``: 1/2, 1/4 or 1/8) whose short side is still at least
            ``target_size``, which makes 2048x1536 JPEGs several times faster to read. Other
            formats are decoded at full size. The image is never resized here.

    Returns:
        A fully loaded RGB image, detached from the file.

    Raises:
        ImageReadError: missing, unreadable, corrupt, truncated or unsupported file.
    """
    path = Path(path)
    try:
        with _open(path) as img:
            _check_pixels(path, img.size)
            if target_size is not None and img.format == "JPEG":
                side = max(int(target_size), 1)
                img.draft("RGB", (side, side))
            img.load()
            oriented = ImageOps.exif_transpose(img)
            rgb = to_rgb(oriented)
            return rgb.copy() if rgb is img else rgb
    except FileNotFoundError:
        raise ImageReadError(path, "file not found") from None
    except IsADirectoryError:
        raise ImageReadError(path, "a folder, not an image file") from None
    except UnidentifiedImageError:
        raise ImageReadError(path, "not an image PIL can identify (corrupt or wrong "
                                   "extension)") from None
    except Image.DecompressionBombError:
        raise ImageReadError(path, f"more than {MAX_PIXELS / 1e6:.0f} megapixels, the most "
                                   "embedcyto decodes; downscale it or leave it out") from None
    except (OSError, SyntaxError, ValueError, EOFError) as err:
        raise ImageReadError(path, f"corrupt or truncated ({err})") from None


def _open(path: Path) -> Image.Image:
    """``Image.open`` (the header only) without PIL's decompression-bomb warning."""
    with _OPEN_LOCK, warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        return Image.open(path)


def _check_pixels(path: Path, size: tuple[int, int]) -> None:
    """Refuse an image above :data:`MAX_PIXELS` from its header, before decoding anything."""
    width, height = size
    if width * height > MAX_PIXELS:
        raise ImageReadError(
            path, f"{width}x{height} is {width * height / 1e6:.0f} megapixels, more than the "
                  f"{MAX_PIXELS / 1e6:.0f} embedcyto decodes; downscale it (a few thousand "
                  "pixels a side is plenty: models see 224 to 448) or leave it out")


def image_problem(path: str | os.PathLike, *, target_size: int | None = None) -> str | None:
    """Why ``path`` cannot be read (the ImageReadError reason), or None when it reads fine.

    ``target_size`` decodes large JPEGs at reduced size, as extraction will; without it they are
    decoded at the smallest scale (1/8). Either way the whole compressed stream is read, so
    truncation and corruption are still found, at a fraction of the cost. Images above
    :data:`MAX_PIXELS` are refused from their header without decoding.
    """
    try:
        read_image(path, target_size=target_size if target_size is not None else 1)
    except ImageReadError as err:
        return err.reason
    return None
