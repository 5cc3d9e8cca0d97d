"""Grounding: the VLM finds what a description names ("the dog on the left") as boxes, which become a repaint mask.

Boxes use the Qwen3-VL / Qwen3.5 convention: [x1, y1, x2, y2] on a 0-1000 grid relative to the image,
whatever its size (Qwen2.5-VL used pixels of its resized input instead). Replies are validated with pydantic
and an invalid one is retried by the client, never patched up.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from PIL import Image, ImageDraw
from pydantic import BaseModel, ConfigDict, Field, field_validator

from .schemas import VLMUsage

GRID = 1000


class GroundedObject(BaseModel):
    """One object the VLM found, with its box on the 0-1000 grid."""

    model_config = ConfigDict(extra="forbid")

    label: str = Field(description="what the object is")
    bbox_2d: list[float] = Field(min_length=4, max_length=4, description="[x1, y1, x2, y2], 0-1000 relative to the image")

    @field_validator("bbox_2d")
    @classmethod
    def _on_the_grid(cls, box: list[float]) -> list[float]:
        x1, y1, x2, y2 = box
        if not all(0 <= value <= GRID for value in box):
            raise ValueError(f"bbox_2d values must be on the 0-{GRID} grid (got {box})")
        if not (x1 < x2 and y1 < y2):
            raise ValueError(f"bbox_2d must be [x1, y1, x2, y2] with x1 < x2 and y1 < y2 (got {box})")
        return box

    def pixel_box(self, size: tuple[int, int], grow: int = 0) -> tuple[int, int, int, int]:
        """(left, top, right, bottom) in pixels of an image of `size`, grown by `grow` pixels and clipped to it."""
        width, height = size
        x1, y1, x2, y2 = self.bbox_2d
        return (
            max(0, int(x1 * width / GRID) - grow),
            max(0, int(y1 * height / GRID) - grow),
            min(width, math.ceil(x2 * width / GRID) + grow),
            min(height, math.ceil(y2 * height / GRID) + grow),
        )


class Grounding(BaseModel):
    """The VLM's answer: every object matching the description (empty when nothing does)."""

    model_config = ConfigDict(extra="forbid")

    objects: list[GroundedObject] = Field(description="matching objects; empty if none")


class GroundingResult(BaseModel):
    grounding: Grounding
    model: str
    usage: VLMUsage


class NothingFound(ValueError):
    """The VLM found nothing matching the description; repainting nothing (or everything) would be wrong."""


def boxes_mask(size: tuple[int, int], objects: Sequence[GroundedObject], *, grow: int = 0) -> Image.Image:
    """White (repaint) inside every box, black elsewhere, at the image's `size`."""
    mask = Image.new("L", size, 0)
    draw = ImageDraw.Draw(mask)
    for found in objects:
        left, top, right, bottom = found.pixel_box(size, grow)
        draw.rectangle((left, top, right - 1, bottom - 1), fill=255)
    return mask


def mask_for(size: tuple[int, int], result: GroundingResult, description: str, *, grow: int = 0) -> Image.Image:
    if not result.grounding.objects:
        raise NothingFound(
            f"mask_prompt: the VLM ({result.model}) found nothing matching {description!r} in the image; "
            "describe it differently, or give mask_shapes or a mask"
        )
    return boxes_mask(size, result.grounding.objects, grow=grow)
