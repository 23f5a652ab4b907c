"""Fit an image into a byte budget (downscale, then recompress), so one figure cannot flood a
client's context or exceed its image limit. CPU-bound: call it from a worker thread."""

from __future__ import annotations

import io
import logging
import math
from dataclasses import dataclass

from PIL import Image as PILImage
from PIL import UnidentifiedImageError

logger = logging.getLogger(__name__)

_ATTEMPTS = 8
_SHRINK = 0.8
_JPEG_QUALITY = 80
# Refuse to decode more pixels than this (decompression bombs): such images are only saved.
MAX_PIXELS = 50_000_000
MIME_TYPES = {
    "png": "image/png",
    "jpeg": "image/jpeg",
    "jpg": "image/jpeg",
    "gif": "image/gif",
    "webp": "image/webp",
}


@dataclass(frozen=True)
class Fitted:
    data: bytes
    format: str  # "png" or "jpeg" after re-encoding; the original format when it already fitted
    original_bytes: int

    @property
    def reduced(self) -> bool:
        return len(self.data) < self.original_bytes

    @property
    def mime_type(self) -> str:
        return MIME_TYPES.get(self.format, f"image/{self.format}")


def fit(data: bytes, fmt: str, max_bytes: int) -> Fitted | None:
    """`data` itself when it fits, else a smaller re-encoding; None when it cannot be made to fit
    (or is not an image Pillow can read, e.g. SVG)."""
    fmt = fmt.lower()
    if len(data) <= max_bytes:
        return Fitted(data, fmt, len(data))
    try:
        with PILImage.open(io.BytesIO(data)) as opened:
            if opened.width * opened.height > MAX_PIXELS:
                logger.info("image of %dx%d pixels not decoded (too large)", opened.width, opened.height)
                return None
            opened.load()  # the pixels stay usable once the (in-memory) file is closed
            image = opened
    except (UnidentifiedImageError, OSError, ValueError, PILImage.DecompressionBombError):
        return None
    # Encoded size grows with the pixel count. PNG (sharp for plots) at the scale that should just
    # fit; else JPEG, aimed at the budget from a probe at that scale, shrinking until it fits.
    png_scale = min(1.0, math.sqrt(max_bytes / len(data)))
    if png_scale < 1.0 or fmt != "png":  # the pool's own PNG at full size is too big already
        png = _encode(_scaled(image, png_scale), "PNG")
        if len(png) <= max_bytes:
            return Fitted(png, "png", len(data))
    probe = _encode(_flatten(_scaled(image, png_scale)), "JPEG")
    scale = min(1.0, png_scale * math.sqrt(max_bytes / len(probe)) * 0.95)
    for _ in range(_ATTEMPTS):
        jpeg = probe if scale == png_scale else _encode(_flatten(_scaled(image, scale)), "JPEG")
        if len(jpeg) <= max_bytes:
            return Fitted(jpeg, "jpeg", len(data))
        scale *= _SHRINK
    return None


def _scaled(image: PILImage.Image, scale: float) -> PILImage.Image:
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    if size == image.size:
        return image
    return image.resize(size, PILImage.Resampling.LANCZOS, reducing_gap=3.0)


def _encode(image: PILImage.Image, fmt: str) -> bytes:
    out = io.BytesIO()
    if fmt == "JPEG":
        image.save(out, fmt, quality=_JPEG_QUALITY)
    else:
        image.save(out, fmt, compress_level=6)  # optimize=True is 4x slower for ~2% less
    return out.getvalue()


def _flatten(image: PILImage.Image) -> PILImage.Image:
    """RGB for JPEG: transparency becomes white, as the figure would look on a page."""
    if image.mode in ("RGBA", "LA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = PILImage.new("RGB", rgba.size, (255, 255, 255))
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    return image.convert("RGB") if image.mode != "RGB" else image
