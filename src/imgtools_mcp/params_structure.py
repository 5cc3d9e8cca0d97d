"""Request models for structure and finishing on the image tools: `control` (ControlNet) and `hires` (hires fix)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic_core import PydanticCustomError

ControlTypeName = Literal["canny", "depth", "pose", "lineart", "scribble", "tile", "image"]


class ControlRequest(BaseModel):
    """One ControlNet: a picture to take structure from (or a ready map), how strongly, over which steps."""

    model_config = ConfigDict(extra="forbid")

    type: ControlTypeName = Field(
        description="canny/lineart/scribble (edges), depth, pose, tile (the picture itself) are made from `image`; "
        "image: `image` already is the control map"
    )
    image: str = Field(min_length=1, description="Picture the map is made from (or the map): an output id, path, data: URL or URL")
    weight: float = Field(1.0, ge=0.0, le=2.0, description="ControlNet strength; 0 is off, 1 full")
    start: float = Field(0.0, ge=0.0, le=1.0, description="Fraction of the steps where the control starts")
    end: float = Field(1.0, ge=0.0, le=1.0, description="Fraction of the steps where it stops")
    model: str | None = Field(
        None, min_length=1, description="ControlNet weights (folder, name in IMGTOOLS_CONTROLNET_DIRS or hub id); default by family and type"
    )

    @model_validator(mode="after")
    def _window(self) -> "ControlRequest":
        if self.start >= self.end:
            raise PydanticCustomError("control_window", "start must be below end (got {start}, {end})", {"start": self.start, "end": self.end})
        return self


class HiresRequest(BaseModel):
    """A1111's hires fix: generate at the base size, upscale, then an img2img pass at the large size."""

    model_config = ConfigDict(extra="forbid")

    scale: float = Field(2.0, gt=1.0, le=4.0, description="How much larger the result is than width x height (1-4)")
    denoise: float = Field(0.4, gt=0.0, le=1.0, description="Strength of the second pass: 0.3-0.5 adds detail, more repaints")
    steps: int | None = Field(None, ge=1, le=150, description="Second pass steps; default: the first pass's")
    upscaler: str | None = Field(
        None, min_length=1, description="Upscaler weights (as upscale's `model`) for the enlargement; default Lanczos"
    )
