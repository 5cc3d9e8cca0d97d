"""Request models for structure and finishing on the image tools: `control` (ControlNet) and `hires` (hires fix)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic_core import PydanticCustomError

ControlTypeName = Literal["canny", "depth", "pose", "lineart", "scribble", "tile", "image"]


class ControlRequest(BaseModel):
    """One ControlNet: structure taken from a picture (or a ready map), how strongly, over which steps."""

    model_config = ConfigDict(extra="forbid")

    type: ControlTypeName = Field(description="Map made from image; image: it is the map")
    image: str = Field(min_length=1, description="As `image`")
    weight: float = Field(1.0, ge=0.0, le=2.0, description="Strength, 0 off")
    start: float = Field(0.0, ge=0.0, le=1.0, description="Fraction of steps")
    end: float = Field(1.0, ge=0.0, le=1.0, description="Fraction of steps")
    model: str | None = Field(None, min_length=1, description="ControlNet; default by family and type")

    @model_validator(mode="after")
    def _window(self) -> "ControlRequest":
        if self.start >= self.end:
            raise PydanticCustomError("control_window", "start must be below end (got {start}, {end})", {"start": self.start, "end": self.end})
        return self


class HiresRequest(BaseModel):
    """A1111's hires fix: generate at the base size, upscale, then an img2img pass at the large size."""

    model_config = ConfigDict(extra="forbid")

    scale: float = Field(2.0, gt=1.0, le=4.0, description="Result size / base size")
    denoise: float = Field(0.4, gt=0.0, le=1.0, description="Second pass strength")
    steps: int | None = Field(None, ge=1, le=150, description="Second pass steps")
    upscaler: str | None = Field(None, min_length=1, description="As upscale's model; default Lanczos")
