"""Inline thumbnails for tool results: long edge capped, all bytes of one result within a budget."""

from __future__ import annotations

import io
import math
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Literal

from PIL import Image

from .refs import to_rgb

ThumbFormat = Literal["webp", "jpeg"]
_MIME = {"webp": "image/webp", "jpeg": "image/jpeg"}
_QUALITIES = (80, 60, 40)
_MIN_EDGE = 16
_MAX_PASSES = 8


def make_thumbnails(
    images: list[Image.Image],
    max_edge: int = 768,
    budget_bytes: int = 700_000,
    format: ThumbFormat = "webp",
) -> list[tuple[bytes, str]]:
    """One (bytes, mime) per image, in order; lowers quality, then size, until the total fits."""
    if format not in _MIME:
        raise ValueError(f"thumbnail format must be 'webp' or 'jpeg', not {format!r}")
    if not images:
        return []
    base = [_shrink(to_rgb(image), max_edge) for image in images]
    quality_index, scale = 0, 1.0
    attempts: list[tuple[float, int]] = []  # (scale, total bytes) of every pass so far
    fitted: list[bytes] | None = None  # a shrunken result that fit, kept while trying larger
    if format == "webp":
        # WebP costs ~10x JPEG to encode and is rarely larger, so a JPEG pass tells cheaply when
        # full-size thumbnails are hopeless (noise, many images) and the first WebP pass can be skipped.
        probe = sum(len(data) for data in _encode_all(base, "jpeg", _QUALITIES[0]))
        if probe > 2 * budget_bytes:
            attempts.append((1.0, probe))
            quality_index = len(_QUALITIES) - 1
            scale = math.sqrt(budget_bytes / probe) * 0.9
    for _ in range(_MAX_PASSES):
        thumbs = base if scale == 1.0 else [_resize(thumb, scale) for thumb in base]
        encoded = _encode_all(thumbs, format, _QUALITIES[quality_index])
        total = sum(len(data) for data in encoded)
        if total <= budget_bytes:
            if scale == 1.0 or fitted is not None or total >= 0.7 * budget_bytes:
                return [(data, _MIME[format]) for data in encoded]
            # Shrinking overshot (downscaled detail compresses better than pixel count
            # predicts), so try once at the size the measured byte/scale curve suggests.
            fitted = encoded
            scale = min(1.0, scale * _scale_for(attempts[-1], (scale, total), 0.9 * budget_bytes / total))
            continue
        if fitted is not None:
            return [(data, _MIME[format]) for data in fitted]
        attempts.append((scale, total))
        ratio = budget_bytes / total
        # Close to the budget a lower quality is enough; far from it (noise, many images)
        # each quality step costs a full encode, so drop to the lowest and resize at once.
        if quality_index + 1 < len(_QUALITIES) and ratio > 0.6:
            quality_index += 1
            continue
        quality_index = len(_QUALITIES) - 1
        # Bytes scale at most with pixel count; 0.9 leaves margin so the next pass usually fits.
        scale *= math.sqrt(ratio) * 0.9
        if max(max(thumb.size) for thumb in base) * scale < _MIN_EDGE:
            break
    if fitted is not None:
        return [(data, _MIME[format]) for data in fitted]
    raise ValueError(f"cannot fit {len(images)} thumbnails into {budget_bytes} bytes")


def _scale_for(before: tuple[float, int], after: tuple[float, int], growth: float) -> float:
    """Scale factor that grows the bytes by `growth`, assuming bytes ~ scale**k with k fitted to
    two passes; the earlier pass also had a higher quality, which makes k large and the guess safe."""
    (scale_a, bytes_a), (scale_b, bytes_b) = before, after
    exponent = max(2.0, math.log(bytes_a / bytes_b) / math.log(scale_a / scale_b))
    return growth ** (1 / exponent)


def _encode_all(thumbs: list[Image.Image], format: ThumbFormat, quality: int) -> list[bytes]:
    if len(thumbs) == 1:
        return [_encode(thumbs[0], format, quality)]
    # Pillow's encoders release the GIL, so threads give a near-linear speed-up.
    with ThreadPoolExecutor(max_workers=min(len(thumbs), os.cpu_count() or 1)) as pool:
        return list(pool.map(lambda thumb: _encode(thumb, format, quality), thumbs))


def _shrink(image: Image.Image, max_edge: int) -> Image.Image:
    image = image.copy()
    image.thumbnail((max_edge, max_edge), Image.Resampling.LANCZOS)
    return image


def _resize(image: Image.Image, scale: float) -> Image.Image:
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    return image.resize(size, Image.Resampling.BILINEAR, reducing_gap=2.0)


def _encode(image: Image.Image, format: ThumbFormat, quality: int) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=format.upper(), quality=quality)
    return buffer.getvalue()
