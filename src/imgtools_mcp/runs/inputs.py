"""What a tool adds to the shared parameters (ImageInputs), and what edit and inpaint share: the input image's
record (hash, reference, parent) and default working sizes."""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from PIL import Image

from ..engine.cache import Mode
from ..images.refs import ResolvedImage, shorten_reference

SIZE_MULTIPLE = 8
MIN_SIDE = 64  # the request models' lower bound for width/height
MAX_SIDE = 4096  # and their upper bound


@dataclass
class ImageInputs:
    """What a tool adds to the shared parameters: its mode, input images, and what to record about them."""

    mode: Mode = "txt2img"
    image: Image.Image | None = None
    mask: Image.Image | None = None
    strength: float | None = None
    default_size: tuple[int, int] | None = None
    infotext: dict[str, Any] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)
    postprocess: Callable[[Image.Image], Image.Image] | None = None
    notes: list[str] = field(default_factory=list)
    parameters: dict[str, Any] = field(default_factory=dict)  # tool-specific entries of the reported `parameters`
    extra: dict[str, Any] = field(default_factory=dict)  # EngineRequest.extra: the control maps made for this request
    # Instruction edits: extra images the model takes as its own inputs, with their weights (issue 13).
    reference_images: list[tuple[Image.Image, float]] = field(default_factory=list)
    hires: Any = None  # generate's hires fix (params_structure.HiresRequest), run on the first pass's images


@dataclass(frozen=True)
class InputRecord:
    """How an input image is named in infotext, sidecar and the reported parameters."""

    reference: str
    sha256: str
    source: str
    parent: str | None
    size: tuple[int, int]

    @classmethod
    def of(cls, resolved: ResolvedImage) -> "InputRecord":
        # URLs may carry tokens and data URLs are megabytes: keep what is recorded readable and short.
        reference = shorten_reference(resolved.reference, limit=160)
        return cls(reference, resolved.sha256, resolved.source, resolved.output_id, resolved.image.size)

    def infotext(self) -> dict[str, Any]:
        return {"Init image": self.reference, "Init image hash": self.sha256[:10]}

    def metadata(self) -> dict[str, Any]:
        return {
            "parent": self.parent,
            "input": {
                "reference": self.reference,
                "source": self.source,
                "sha256": self.sha256,
                "width": self.size[0],
                "height": self.size[1],
            },
        }


def _round_to(value: float, *, down: bool = False, multiple: int = SIZE_MULTIPLE) -> int:
    # Half up, not Python's round-half-to-even: 84 px becomes 88, as a person would round it.
    steps = math.floor(value / multiple + (0 if down else 0.5))
    return min(MAX_SIDE // multiple * multiple, max(-(-MIN_SIDE // multiple) * multiple, steps * multiple))


def size_for(
    size: tuple[int, int], max_pixels: int, *, width: int | None = None, height: int | None = None,
    multiple: int = SIZE_MULTIPLE,
) -> tuple[tuple[int, int], str | None]:
    """Working size for an input of `size`: the explicit width/height, else the input's own size
    rounded to multiples of 8 (the family's size multiple; one side given: the other keeps the aspect),
    scaled down to fit `max_pixels`. Returns the size and a note when it differs from the input's."""
    _to_multiple = functools.partial(_round_to, multiple=multiple)
    src_w, src_h = size
    if width and height:
        return (width, height), None
    if width:
        return (width, _to_multiple(width * src_h / src_w)), None
    if height:
        return (_to_multiple(height * src_w / src_h), height), None
    if src_w * src_h <= max_pixels:
        chosen = (_to_multiple(src_w), _to_multiple(src_h))
        if chosen[0] * chosen[1] > max_pixels:  # rounding up can cross the limit by a sliver
            chosen = (_to_multiple(src_w, down=True), _to_multiple(src_h, down=True))
        reason = f"rounded to multiples of {multiple} (each side {MIN_SIDE}-{MAX_SIDE})"
    else:
        scale = math.sqrt(max_pixels / (src_w * src_h))
        chosen = (_to_multiple(src_w * scale, down=True), _to_multiple(src_h * scale, down=True))
        reason = f"scaled down to fit IMGTOOLS_MAX_PIXELS={max_pixels}"
    if chosen == (src_w, src_h):
        return chosen, None
    return chosen, f"worked at {chosen[0]}x{chosen[1]}: the {src_w}x{src_h} input {reason}"


def area_size(
    box_size: tuple[int, int], pixels: int, *, width: int | None = None, height: int | None = None,
    multiple: int = SIZE_MULTIPLE,
) -> tuple[int, int]:
    """Working size for a crop: its aspect at about `pixels` pixels (the model's native area), multiples of 8
    (or the family's size multiple)."""
    _to_multiple = functools.partial(_round_to, multiple=multiple)
    box_w, box_h = box_size
    if width and height:
        return width, height
    if width:
        return width, _to_multiple(width * box_h / box_w)
    if height:
        return _to_multiple(height * box_w / box_h), height
    scale = math.sqrt(pixels / (box_w * box_h))
    return _to_multiple(box_w * scale), _to_multiple(box_h * scale)
