"""Inpainting and outpainting masks: shapes to masks, fitting, feathering, cropping and compositing."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Literal

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageOps
from pydantic import BaseModel, ConfigDict, Field

Size = tuple[int, int]
Box = tuple[int, int, int, int]
MAX_SHAPE_PIXELS = 65536


class MaskShape(BaseModel):
    """A rectangle or ellipse; if all four numbers are <= 1 they are fractions of the image, else pixels."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["rect", "ellipse"]
    # Bounded: 1e308 passes `ge=0` but overflows once scaled or added; no image is wider than MAX_SHAPE_PIXELS.
    x: float = Field(ge=0, le=MAX_SHAPE_PIXELS, allow_inf_nan=False, description="left edge")
    y: float = Field(ge=0, le=MAX_SHAPE_PIXELS, allow_inf_nan=False, description="top edge")
    width: float = Field(gt=0, le=MAX_SHAPE_PIXELS, allow_inf_nan=False)
    height: float = Field(gt=0, le=MAX_SHAPE_PIXELS, allow_inf_nan=False)

    @property
    def is_fraction(self) -> bool:
        return max(self.x, self.y, self.width, self.height) <= 1

    def pixel_box(self, size: Size) -> Box:
        """(left, top, right, bottom) in pixels, right/bottom exclusive, not yet clipped to the image."""
        scale_x, scale_y = size if self.is_fraction else (1, 1)
        left, top = round(self.x * scale_x), round(self.y * scale_y)
        right, bottom = round((self.x + self.width) * scale_x), round((self.y + self.height) * scale_y)
        # A tiny fractional shape still marks at least one pixel rather than silently nothing.
        return left, top, max(right, left + 1), max(bottom, top + 1)


def mask_from_shapes(size: Size, shapes: Sequence[MaskShape | Mapping]) -> Image.Image:
    """White (255) inside any shape, black elsewhere."""
    if not shapes:
        raise ValueError("mask_shapes must contain at least one shape")
    width, height = size
    mask = Image.new("L", size, 0)
    draw = ImageDraw.Draw(mask)
    for index, raw in enumerate(shapes):
        shape = raw if isinstance(raw, MaskShape) else MaskShape.model_validate(raw)
        left, top, right, bottom = shape.pixel_box(size)
        if left >= width or top >= height:
            raise ValueError(f"mask_shapes[{index}] starts at {left},{top}, outside the {width}x{height} image")
        # ImageDraw boxes are inclusive; ours are exclusive, hence the -1. A shape may run past the image: clip it.
        box = (left, top, min(right, width) - 1, min(bottom, height) - 1)
        if shape.type == "rect":
            draw.rectangle(box, fill=255)
        else:
            draw.ellipse(box, fill=255)
    return mask


def fit_mask(mask: Image.Image, size: Size, *, invert: bool = False) -> tuple[Image.Image, bool]:
    """Binary "L" mask of `size` (white = repaint); also says whether it had to be resized."""
    mask = mask if mask.mode == "L" else mask.convert("L")
    resized = mask.size != tuple(size)
    if resized:
        mask = mask.resize(size, Image.Resampling.BILINEAR)
    mask = mask.point(lambda value: 255 if value >= 128 else 0)
    return (ImageOps.invert(mask) if invert else mask), resized


def expand_canvas(
    image: Image.Image, left: int, right: int, top: int, bottom: int, *, overlap: int = 8, seed: int = 0
) -> tuple[Image.Image, Image.Image]:
    """Grow the canvas for outpainting; returns (canvas with a pre-filled border, mask of what to paint)."""
    amounts = {"left": left, "right": right, "top": top, "bottom": bottom}
    for name, amount in amounts.items():
        if not isinstance(amount, int) or amount < 0:
            raise ValueError(f"expand.{name} must be a whole number of pixels >= 0, got {amount!r}")
    if not any(amounts.values()):
        raise ValueError("expand needs at least one of left, right, top, bottom > 0")
    image = image.convert("RGB")
    width, height = image.size
    pixels = np.asarray(image)
    # Replicated edges give the denoiser the right colours; blurring removes the streaks and
    # mild noise gives it texture to work with, so the new border does not come out flat.
    padded = np.pad(pixels, ((top, bottom), (left, right), (0, 0)), mode="edge")
    radius = min(64.0, max(4.0, max(amounts.values()) / 4))
    blurred = np.asarray(Image.fromarray(padded).filter(ImageFilter.GaussianBlur(radius)), dtype=np.float32)
    noise = np.random.default_rng(seed).normal(0.0, 8.0, blurred.shape).astype(np.float32)
    canvas = Image.fromarray(np.clip(blurred + noise, 0, 255).astype(np.uint8))
    canvas.paste(image, (left, top))

    # The overlap repaints a thin strip of the original so the seam itself gets regenerated.
    mask = Image.new("L", canvas.size, 255)
    keep = (
        left + (min(overlap, width // 2) if left else 0),
        top + (min(overlap, height // 2) if top else 0),
        left + width - (min(overlap, width // 2) if right else 0),
        top + height - (min(overlap, height // 2) if bottom else 0),
    )
    mask.paste(0, keep)
    return canvas, mask


def blur_mask(mask: Image.Image, radius: float) -> Image.Image:
    """Gaussian-feathered copy of the mask (radius 0: unchanged copy)."""
    if radius < 0:
        raise ValueError(f"mask_blur must be >= 0, got {radius}")
    mask = mask.convert("L")
    return mask.filter(ImageFilter.GaussianBlur(radius)) if radius > 0 else mask.copy()


def mask_coverage(mask: Image.Image) -> float:
    """Fraction of pixels marked for repainting (value >= 128)."""
    values = np.asarray(mask.convert("L"))
    return float((values >= 128).mean()) if values.size else 0.0


def masked_crop_box(
    mask: Image.Image,
    padding: int,
    image_size: Size,
    target_multiple: int = 8,
    *,
    working_size: Size | None = None,
) -> Box:
    """Region to inpaint for `inpaint_area="masked"`: the mask's bounding box plus `padding`,
    grown to the aspect ratio of `working_size` (default: the image's), each side rounded up to
    `target_multiple` where the image allows, shifted and clamped to lie inside the image."""
    if padding < 0:
        raise ValueError(f"padding must be >= 0, got {padding}")
    if mask.size != tuple(image_size):
        raise ValueError(f"mask is {mask.size[0]}x{mask.size[1]} but the image is {image_size[0]}x{image_size[1]}")
    bbox = mask.convert("L").point(lambda value: 255 if value >= 128 else 0).getbbox()
    if bbox is None:
        raise ValueError("mask is empty: nothing to inpaint")
    image_w, image_h = image_size
    work_w, work_h = working_size or image_size
    left, top, right, bottom = bbox[0] - padding, bbox[1] - padding, bbox[2] + padding, bbox[3] + padding
    need_w, need_h = right - left, bottom - top
    box_w = _round_up(need_w, target_multiple)
    box_h = _round_up(need_h, target_multiple)
    # Grow the short side (never shrink) so resizing the crop to the working size keeps its
    # shape; rounding the grown side to the nearest multiple keeps small boxes close to it.
    if box_w / box_h < work_w / work_h:
        box_w = max(box_w, round(box_h * work_w / work_h / target_multiple) * target_multiple)
    else:
        box_h = max(box_h, round(box_w * work_h / work_w / target_multiple) * target_multiple)
    x0, x1 = _place_span((left + right) / 2, box_w, image_w)
    y0, y1 = _place_span((top + bottom) / 2, box_h, image_h)
    return x0, y0, x1, y1


def _round_up(value: int, multiple: int) -> int:
    return math.ceil(value / multiple) * multiple


def _place_span(center: float, length: int, limit: int) -> tuple[int, int]:
    # Shift a span that sticks out back inside rather than cutting it, so it keeps its length.
    if length >= limit:
        return 0, limit
    start = min(max(round(center - length / 2), 0), limit - length)
    return start, start + length


def paste_back(
    original: Image.Image, generated_crop: Image.Image, box: Box, blurred_mask: Image.Image
) -> Image.Image:
    """Put an inpainted crop back into the full image; outside the blurred mask the original is untouched."""
    box_size = (box[2] - box[0], box[3] - box[1])
    crop = generated_crop.convert(original.mode)
    if crop.size != box_size:
        crop = crop.resize(box_size, Image.Resampling.LANCZOS)
    full = original.copy()
    full.paste(crop, box[:2])
    return composite(original, full, blurred_mask)


def composite(original: Image.Image, generated: Image.Image, blurred_mask: Image.Image) -> Image.Image:
    """`generated` where the mask is white, `original` where it is black, blended in between."""
    if blurred_mask.size != original.size:
        raise ValueError(f"mask is {blurred_mask.size[0]}x{blurred_mask.size[1]} but the image is "
                         f"{original.size[0]}x{original.size[1]}")
    generated = generated.convert(original.mode)
    # Pipelines work in multiples of 8, so the generated image may be a few pixels off.
    if generated.size != original.size:
        generated = generated.resize(original.size, Image.Resampling.LANCZOS)
    return Image.composite(generated, original, blurred_mask.convert("L"))


def describe_mask(
    *,
    shapes: Sequence[MaskShape | Mapping] = (),
    mask_reference: str | None = None,
    expand: Mapping[str, int] | None = None,
    blur: float = 0,
    invert: bool = False,
    resized_from: Size | None = None,
    inpaint_area: str = "full",
    padding: int = 0,
) -> str:
    """Short human description for infotext, e.g. "rect 0.25,0.25 0.5x0.5; blur 4"."""
    parts: list[str] = []
    for raw in shapes:
        shape = raw if isinstance(raw, MaskShape) else MaskShape.model_validate(raw)
        unit = "" if shape.is_fraction else "px"
        parts.append(f"{shape.type} {shape.x:g},{shape.y:g} {shape.width:g}x{shape.height:g}{unit}")
    if mask_reference:
        resized = f" (resized from {resized_from[0]}x{resized_from[1]})" if resized_from else ""
        parts.append(f"mask {mask_reference}{resized}")
    if expand:
        sides = " ".join(f"{side} {expand[side]}" for side in ("left", "right", "top", "bottom") if expand.get(side))
        parts.append(f"expand {sides}")
    if invert:
        parts.append("inverted")
    if blur:
        parts.append(f"blur {blur:g}")
    if inpaint_area == "masked":
        parts.append(f"masked area, padding {padding}")
    return "; ".join(parts) or "no mask"
