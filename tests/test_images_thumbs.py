"""Thumbnails: long edge capped, whole result within the inline byte budget, fast."""

from __future__ import annotations

import io
import time

import numpy as np
import pytest
from PIL import Image

from imgtools_mcp.images.thumbs import make_thumbnails


def noise(size: tuple[int, int], seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


def gradient(size: tuple[int, int]) -> Image.Image:
    x = np.linspace(0, 255, size[0], dtype=np.float32)
    y = np.linspace(0, 255, size[1], dtype=np.float32)
    channel = ((x[None, :] + y[:, None]) / 2).astype(np.uint8)
    return Image.fromarray(np.stack([channel, channel[::-1], 255 - channel], axis=-1))


@pytest.mark.parametrize("format", ["webp", "jpeg"])
def test_eight_noisy_images_fit_the_budget(format: str) -> None:
    images = [noise((1024, 1024), seed) for seed in range(8)]
    started = time.perf_counter()
    thumbs = make_thumbnails(images, format=format)
    elapsed = time.perf_counter() - started
    assert len(thumbs) == 8
    assert sum(len(data) for data, _ in thumbs) <= 700_000
    for data, mime in thumbs:
        assert mime == f"image/{format}"
        decoded = Image.open(io.BytesIO(data))
        assert decoded.format == format.upper() and max(decoded.size) <= 768
    assert elapsed < 5  # generous for slow CI; about 0.3 s on a laptop


def test_smooth_images_keep_full_thumbnail_size_and_aspect() -> None:
    thumbs = make_thumbnails([gradient((1024, 512)), gradient((300, 200))])
    sizes = [Image.open(io.BytesIO(data)).size for data, _ in thumbs]
    assert sizes == [(768, 384), (300, 200)]  # never upscaled


def test_modes_are_flattened_and_inputs_untouched() -> None:
    rgba = Image.new("RGBA", (900, 900), (0, 0, 0, 0))
    gray16 = Image.fromarray(np.full((40, 40), 40000, dtype=np.uint16))
    thumbs = make_thumbnails([rgba, gray16, Image.new("P", (10, 10))], format="jpeg")
    assert rgba.size == (900, 900)
    first = Image.open(io.BytesIO(thumbs[0][0])).convert("RGB")
    assert min(first.getpixel((5, 5))) > 240  # transparent -> white, not black
    second = Image.open(io.BytesIO(thumbs[1][0])).convert("L")
    assert 140 < second.getpixel((5, 5)) < 170  # 40000/65535 of full scale, not clipped to white


def test_tiny_budget_shrinks_and_impossible_budget_is_an_error() -> None:
    thumbs = make_thumbnails([noise((512, 512), 1)], budget_bytes=20_000)
    assert len(thumbs[0][0]) <= 20_000
    with pytest.raises(ValueError, match="cannot fit 3 thumbnails into 100 bytes"):
        make_thumbnails([noise((64, 64), seed) for seed in range(3)], budget_bytes=100)
    with pytest.raises(ValueError, match="webp' or 'jpeg"):
        make_thumbnails([noise((8, 8), 0)], format="png")
    assert make_thumbnails([]) == []
