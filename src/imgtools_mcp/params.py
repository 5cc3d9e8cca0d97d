"""Request and result models for the image tools: validated once at the edge, passed unchanged inward."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

SamplerName = Literal["euler", "euler_a", "dpmpp_2m", "dpmpp_2m_karras", "ddim", "unipc", "lcm", "default"]
MAX_SEED = 2**32 - 1


class LoraRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, description="LoRA file name (in IMGTOOLS_LORA_DIRS), path, or HF id")
    weight: float = Field(1.0, ge=-4.0, le=4.0, description="Adapter scale; 0 disables, 1 is full strength")


class GenerationParams(BaseModel):
    """Parameters shared by generate, edit and inpaint (and the base of sweep)."""

    model_config = ConfigDict(extra="forbid")

    prompt: str = Field(min_length=1, max_length=4000, description="What to draw")
    negative_prompt: str = Field("", max_length=4000, description="What to avoid")
    model: str | None = Field(
        None, description="HF id, local diffusers folder or .safetensors file; default: the server's configured model"
    )
    width: int | None = Field(
        None, ge=64, le=4096, multiple_of=8, description="Pixels, multiple of 8; default: the model's native size"
    )
    height: int | None = Field(
        None, ge=64, le=4096, multiple_of=8, description="Pixels, multiple of 8; default: the model's native size"
    )
    steps: int | None = Field(None, ge=1, le=150, description="Denoising steps; default by family (turbo 4, SD 25, SDXL 30)")
    guidance_scale: float | None = Field(
        None, ge=0.0, le=30.0, description="Classifier-free guidance; default by family (turbo 0, SD 7, SDXL 5)"
    )
    sampler: SamplerName = Field("default", description="Scheduler short name; 'default' keeps the model's own")
    seed: int | None = Field(
        None, ge=-1, le=MAX_SEED, description="Random seed; omitted or -1 picks one (always reported); image i uses seed+i"
    )
    num_images: int = Field(1, ge=1, le=8, description="Images to make in one call (1-8)")
    loras: list[LoraRequest] = Field(default_factory=list, max_length=8, description="LoRA adapters as {name, weight}")
    background: bool = Field(False, description="Return a job id at once; poll get_job for progress and the result")


class GenerateRequest(GenerationParams):
    """Text to image."""


class ImageInfo(BaseModel):
    id: str
    uri: str
    metadata_uri: str
    path: str
    width: int
    height: int
    seed: int


class GenerationResult(BaseModel):
    """What an image tool returns in structured_content."""

    images: list[ImageInfo] = Field(default_factory=list)
    parameters: dict[str, Any] = Field(default_factory=dict, description="Parameters actually used, after defaults")
    model: dict[str, Any] = Field(default_factory=dict)
    engine: dict[str, Any] = Field(default_factory=dict, description="Device, dtype, backend and memory plan")
    timings: dict[str, float] = Field(default_factory=dict, description="Seconds per phase")
    warnings: list[str] = Field(default_factory=list)
    job_id: str | None = Field(None, description="Set when background=true: poll get_job with it")


def one_line_error(exc: ValidationError) -> str:
    """A pydantic error as one line naming each bad parameter and what is allowed."""
    parts = []
    for error in exc.errors():
        loc = ".".join(str(p) for p in error["loc"]) or "arguments"
        message = error["msg"]
        if error["type"] == "extra_forbidden":
            message = "unknown parameter"
        elif error["type"] == "missing":
            message = "required"
        got = error.get("input")
        if error["type"] not in ("missing", "extra_forbidden") and isinstance(got, int | float | str) and len(str(got)) < 60:
            message += f" (got {got!r})"
        parts.append(f"{loc}: {message}")
    return "; ".join(parts)
