"""Image files checked before they enter a build: readable by Pillow, an allowed format, within size and pixel
limits (decompression bombs refused before decoding), hashed.

A bad image is an `ImageProblem` with a reject reason (`image_missing`, `image_unreadable`, `image_format`,
`image_too_large`, `image_too_small`) and a detail; ingest turns it into a reject like any other row.
"""

from __future__ import annotations

import hashlib
import io
import warnings
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from bsa.pipeline.config import ImageLimits

# Pillow's format name -> (file extension, MIME type)
FORMATS = {"PNG": ("png", "image/png"), "JPEG": ("jpg", "image/jpeg"), "WEBP": ("webp", "image/webp"),
           "GIF": ("gif", "image/gif"), "BMP": ("bmp", "image/bmp")}


class ImageProblem(Exception):
    """Why an image cannot be used: a reject reason and its detail."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason, self.detail = reason, detail


@dataclass(frozen=True)
class ImageInfo:
    """What a checked image is: its hash, format and size."""

    sha256: str
    format: str  # Pillow's name: PNG, JPEG, ...
    width: int
    height: int

    @property
    def extension(self) -> str:
        return FORMATS[self.format][0]

    @property
    def mime_type(self) -> str:
        return FORMATS[self.format][1]


def check_image_bytes(data: bytes, limits: ImageLimits, name: str = "image") -> ImageInfo:
    """An image's bytes checked against the limits (ImageProblem when they fail), without trusting its name."""
    if len(data) > limits.max_bytes:
        raise ImageProblem("image_too_large", f"{name}: {len(data):,} bytes, more than {limits.max_bytes:,}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as image:  # reads the header only
                fmt, (width, height) = image.format or "", image.size
                if fmt not in limits.formats:
                    raise ImageProblem("image_format", f"{name}: format {fmt or 'unknown'}, allowed: "
                                                       f"{', '.join(limits.formats)}")
                _check_size(name, width, height, limits)  # before decoding: a bomb is refused unopened
                image.load()  # decodes every pixel: truncated or corrupt data fails here
    except ImageProblem:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise ImageProblem("image_too_large", f"{name}: {err}") from err
    except (OSError, ValueError, SyntaxError) as err:  # what Pillow raises for data it cannot read
        raise ImageProblem("image_unreadable", f"{name}: not readable as an image ({err})") from err
    return ImageInfo(hashlib.sha256(data).hexdigest(), fmt, width, height)


def _check_size(name: str, width: int, height: int, limits: ImageLimits) -> None:
    if width * height > limits.max_pixels:
        raise ImageProblem("image_too_large", f"{name}: {width}x{height} = {width * height:,} pixels, more than "
                                              f"{limits.max_pixels:,}")
    if max(width, height) > limits.max_side:
        raise ImageProblem("image_too_large", f"{name}: {width}x{height}, a side longer than {limits.max_side}")
    if min(width, height) < limits.min_side:
        raise ImageProblem("image_too_small", f"{name}: {width}x{height}, a side shorter than {limits.min_side}")


def check_image(path: str | Path, limits: ImageLimits) -> ImageInfo:
    """An image file checked against the limits (ImageProblem naming the file when it fails)."""
    path = Path(path)
    try:
        size = path.stat().st_size
        if not path.is_file():
            raise ImageProblem("image_missing", f"{path}: not a file")
    except OSError as err:
        raise ImageProblem("image_missing", f"{path}: file not found") from err
    if size > limits.max_bytes:  # not read at all
        raise ImageProblem("image_too_large", f"{path}: {size:,} bytes, more than {limits.max_bytes:,}")
    return check_image_bytes(path.read_bytes(), limits, str(path))
