"""Masks for inpainting: shapes, fitting, outpainting canvas, cropping and exact compositing."""

from __future__ import annotations

import math

import numpy as np
import pytest
from PIL import Image
from pydantic import ValidationError

from imgtools_mcp.images.masks import (
    MaskShape,
    blur_mask,
    composite,
    describe_mask,
    expand_canvas,
    fit_mask,
    mask_coverage,
    mask_from_shapes,
    masked_crop_box,
    paste_back,
)


def white_pixels(mask: Image.Image) -> int:
    return int((np.asarray(mask) == 255).sum())


def noise_image(size: tuple[int, int], seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


# --- shapes ---------------------------------------------------------------------------------


def test_rect_in_pixels_and_fractions() -> None:
    mask = mask_from_shapes((200, 100), [{"type": "rect", "x": 10, "y": 20, "width": 30, "height": 40}])
    assert mask.mode == "L" and mask.size == (200, 100)
    assert white_pixels(mask) == 30 * 40
    assert mask.getbbox() == (10, 20, 40, 60)

    mask = mask_from_shapes((200, 100), [MaskShape(type="rect", x=0.25, y=0.25, width=0.5, height=0.5)])
    assert white_pixels(mask) == 100 * 50
    assert mask.getbbox() == (50, 25, 150, 75)
    assert set(np.unique(np.asarray(mask))) == {0, 255}


def test_fraction_rule_is_per_shape() -> None:
    # The first shape is all <= 1 (fractions); the second has a pixel value, so all of it is pixels.
    mask = mask_from_shapes((100, 100), [
        {"type": "rect", "x": 0, "y": 0, "width": 0.1, "height": 0.1},
        {"type": "rect", "x": 50, "y": 50, "width": 1, "height": 10},
    ])
    assert white_pixels(mask) == 10 * 10 + 1 * 10


def test_ellipse_area_and_clipping() -> None:
    mask = mask_from_shapes((400, 400), [{"type": "ellipse", "x": 100, "y": 100, "width": 200, "height": 100}])
    assert white_pixels(mask) == pytest.approx(math.pi * 100 * 50, rel=0.02)
    # Partly off the canvas is clipped, not an error.
    mask = mask_from_shapes((100, 100), [{"type": "rect", "x": 0.5, "y": 0.5, "width": 0.9, "height": 0.9}])
    assert white_pixels(mask) == 50 * 50


@pytest.mark.parametrize("shape", [
    {"type": "triangle", "x": 0, "y": 0, "width": 1, "height": 1},
    {"type": "rect", "x": -1, "y": 0, "width": 1, "height": 1},
    {"type": "rect", "x": 0, "y": 0, "width": 0, "height": 1},
    {"type": "rect", "x": 0, "y": 0, "width": 1},
    {"type": "rect", "x": 0, "y": 0, "width": 1, "height": 1, "radius": 3},
])
def test_invalid_shapes_are_rejected(shape: dict) -> None:
    with pytest.raises(ValidationError):
        mask_from_shapes((64, 64), [shape])


def test_shape_outside_image_and_empty_list_are_errors() -> None:
    with pytest.raises(ValueError, match=r"mask_shapes\[0\].*outside the 64x64 image"):
        mask_from_shapes((64, 64), [{"type": "rect", "x": 100, "y": 0, "width": 10, "height": 10}])
    with pytest.raises(ValueError, match="at least one shape"):
        mask_from_shapes((64, 64), [])


# --- fit, blur, coverage ----------------------------------------------------------------------


def test_fit_mask_resizes_binarizes_and_inverts() -> None:
    gray = Image.new("L", (32, 16), 0)
    gray.paste(200, (0, 0, 16, 16))
    gray.paste(100, (16, 0, 32, 16))  # below 128: keep
    fitted, resized = fit_mask(gray, (64, 32))
    assert resized and fitted.size == (64, 32)
    assert set(np.unique(np.asarray(fitted))) == {0, 255}
    assert mask_coverage(fitted) == pytest.approx(0.5, abs=0.02)

    same, resized = fit_mask(gray.convert("RGB"), (32, 16), invert=True)
    assert not resized and mask_coverage(same) == pytest.approx(0.5)
    assert same.getpixel((0, 0)) == 0 and same.getpixel((20, 0)) == 255


def test_blur_mask_feathers_and_zero_is_identity() -> None:
    mask = mask_from_shapes((64, 64), [{"type": "rect", "x": 16, "y": 16, "width": 32, "height": 32}])
    assert np.array_equal(np.asarray(blur_mask(mask, 0)), np.asarray(mask))
    soft = np.asarray(blur_mask(mask, 4))
    assert 0 < soft[32, 16] < 255 and soft[32, 32] == 255 and soft[0, 0] == 0
    with pytest.raises(ValueError, match="mask_blur"):
        blur_mask(mask, -1)


# --- compositing --------------------------------------------------------------------------------


def test_composite_keeps_outside_pixels_exactly() -> None:
    original, generated = noise_image((96, 80), 1), noise_image((96, 80), 2)
    mask = mask_from_shapes((96, 80), [{"type": "ellipse", "x": 30, "y": 20, "width": 30, "height": 30}])
    soft = blur_mask(mask, 4)
    result = np.asarray(composite(original, generated, soft)).astype(int)
    band = np.asarray(soft) > 0
    outside = ~band
    assert outside.sum() > 0.5 * outside.size
    assert np.abs(result - np.asarray(original).astype(int))[outside].max() == 0
    fully_inside = np.asarray(soft) == 255
    assert np.array_equal(result[fully_inside], np.asarray(generated).astype(int)[fully_inside])
    # The blur band stays near the mask: nothing changes more than 4 blur radii away.
    rows, cols = np.nonzero(band)
    assert rows.min() >= 20 - 16 and cols.max() < 60 + 16


def test_composite_resizes_a_slightly_off_generated_image() -> None:
    original = noise_image((100, 60), 3)
    generated = Image.new("RGB", (104, 64), (0, 255, 0))
    mask = mask_from_shapes((100, 60), [{"type": "rect", "x": 0, "y": 0, "width": 0.5, "height": 1}])
    result = composite(original, generated, mask)
    assert result.size == (100, 60) and result.getpixel((10, 10)) == (0, 255, 0)
    assert result.getpixel((90, 10)) == original.getpixel((90, 10))
    with pytest.raises(ValueError, match="mask is 10x10"):
        composite(original, generated, Image.new("L", (10, 10)))


# --- outpainting -------------------------------------------------------------------------------


def test_expand_canvas_size_original_intact_and_mask() -> None:
    image = noise_image((64, 48), 4)
    canvas, mask = expand_canvas(image, left=32, right=0, top=16, bottom=8)
    assert canvas.size == (64 + 32, 48 + 16 + 8) and mask.size == canvas.size
    assert np.array_equal(np.asarray(canvas.crop((32, 16, 32 + 64, 16 + 48))), np.asarray(image))
    m = np.asarray(mask)
    assert m[:16].min() == 255 and m[-8:].min() == 255 and m[:, :32].min() == 255
    # 8 px overlap into the original on expanded sides only; the unexpanded right edge is kept.
    assert m[16 + 8 : 16 + 48 - 8, 32 + 8 :].max() == 0
    assert m[30, 32 + 7] == 255 and m[30, 95] == 0


def test_expand_canvas_border_blends_with_edges() -> None:
    image = Image.new("RGB", (32, 32), (200, 40, 40))
    canvas, _ = expand_canvas(image, left=0, right=64, top=0, bottom=0)
    border = np.asarray(canvas)[:, 40:].astype(float)
    assert np.abs(border.mean(axis=(0, 1)) - [200, 40, 40]).max() < 10  # edge colour, not black
    assert border.std() > 1  # some texture for the denoiser


@pytest.mark.parametrize("bad", [dict(left=-1), dict(left=0), dict(left=1.5)])
def test_expand_canvas_rejects_bad_amounts(bad: dict) -> None:
    amounts = dict(left=0, right=0, top=0, bottom=0) | bad
    with pytest.raises(ValueError, match="expand"):
        expand_canvas(Image.new("RGB", (8, 8)), **amounts)


# --- masked area ---------------------------------------------------------------------------------


def test_masked_crop_box_padding_aspect_multiple_and_clamp() -> None:
    mask = mask_from_shapes((512, 512), [{"type": "rect", "x": 200, "y": 240, "width": 40, "height": 20}])
    box = masked_crop_box(mask, 16, (512, 512))
    x0, y0, x1, y1 = box
    assert (x1 - x0) == (y1 - y0) and (x1 - x0) % 8 == 0  # square, like the image
    assert x0 <= 200 - 16 and y0 <= 240 - 16 and x1 >= 240 + 16 and y1 >= 260 + 16

    wide = masked_crop_box(mask, 20, (512, 512), working_size=(768, 512))
    assert (wide[2] - wide[0], wide[3] - wide[1]) == (96, 64)  # 80x60 padded, 80x64 rounded, grown to 3:2
    tiny = masked_crop_box(mask, 0, (512, 512), working_size=(768, 512))
    assert (tiny[2] - tiny[0]) / (tiny[3] - tiny[1]) == pytest.approx(1.5, rel=0.15)
    assert tiny[0] <= 200 and tiny[1] <= 240 and tiny[2] >= 240 and tiny[3] >= 260

    corner = mask_from_shapes((512, 256), [{"type": "rect", "x": 0, "y": 0, "width": 10, "height": 10}])
    box = masked_crop_box(corner, 32, (512, 256))
    assert box[0] == 0 and box[1] == 0 and box[2] <= 512 and box[3] <= 256
    assert (box[2] - box[0]) == 2 * (box[3] - box[1])  # shifted inside, not cut

    whole = masked_crop_box(Image.new("L", (100, 60), 255), 8, (100, 60))
    assert whole == (0, 0, 100, 60)
    with pytest.raises(ValueError, match="empty"):
        masked_crop_box(Image.new("L", (64, 64)), 8, (64, 64))


def test_paste_back_changes_only_the_masked_region() -> None:
    original = noise_image((256, 192), 5)
    mask = mask_from_shapes((256, 192), [{"type": "rect", "x": 100, "y": 80, "width": 30, "height": 30}])
    soft = blur_mask(mask, 3)
    box = masked_crop_box(mask, 24, original.size, working_size=(64, 64))
    generated_crop = Image.new("RGB", (64, 64), (0, 0, 255))  # generated at the working size
    result = np.asarray(paste_back(original, generated_crop, box, soft))
    outside = np.asarray(soft) == 0
    assert np.array_equal(result[outside], np.asarray(original)[outside])
    assert tuple(result[95, 115]) == (0, 0, 255)


def test_describe_mask() -> None:
    text = describe_mask(shapes=[{"type": "rect", "x": 0.25, "y": 0.25, "width": 0.5, "height": 0.5}], blur=4)
    assert text == "rect 0.25,0.25 0.5x0.5; blur 4"
    text = describe_mask(mask_reference="20261126-155012-a1b2c3d4", resized_from=(512, 512), invert=True,
                         inpaint_area="masked", padding=32)
    assert text == "mask 20261126-155012-a1b2c3d4 (resized from 512x512); inverted; masked area, padding 32"
    assert describe_mask(expand={"left": 64, "right": 0, "top": 32, "bottom": 0}) == "expand left 64 top 32"
    assert describe_mask(shapes=[{"type": "ellipse", "x": 10, "y": 20, "width": 30, "height": 40}]) \
        == "ellipse 10,20 30x40px"
