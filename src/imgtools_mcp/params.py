"""Request and result models for the image tools: validated once at the edge, passed unchanged inward."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic_core import PydanticCustomError

from .images.masks import MaskShape
from .params_structure import ControlRequest, HiresRequest
from .store import StoredImage

SamplerName = Literal["euler", "euler_a", "dpmpp_2m", "dpmpp_2m_karras", "ddim", "unipc", "lcm", "default"]
MAX_SEED = 2**32 - 1


class LoraRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, description="File in IMGTOOLS_LORA_DIRS, path, or HF id")
    weight: float = Field(1.0, ge=-4.0, le=4.0, description="0 off, 1 full")


IMAGE_REFERENCE = "output id or imgtools:// URI, path under the input roots, data: URL/base64 or http(s) URL"


def _says_something(goal: str) -> str:
    if not goal.strip():
        raise PydanticCustomError("blank", "must describe what the image should show, not only spaces")
    return goal


# What an image should show, as refine and critique take it: a VLM cannot judge against a blank goal.
Goal = Annotated[str, Field(min_length=1, max_length=4000, description="What the image should show"),
                 AfterValidator(_says_something)]


class ReferenceImage(BaseModel):
    model_config = ConfigDict(extra="forbid")

    image: str = Field(min_length=1, description="As `image`")
    weight: float = Field(1.0, ge=0.0, le=2.0, description="0 off; IP-Adapter scale (native inputs: on/off)")


def reference_images_field() -> Any:
    """One `reference_images` for generate, edit and inpaint: the mechanism is the family's (IP-Adapter or native)."""
    return Field(
        default_factory=list, max_length=8,
        description="Style/subject images (as `image`)",
    )


class GenerationParams(BaseModel):
    """Parameters shared by generate, edit and inpaint (and the base of sweep)."""

    model_config = ConfigDict(extra="forbid")

    prompt: str = Field(min_length=1, max_length=4000, description="What to draw")
    negative_prompt: str = Field("", max_length=4000, description="What to avoid")
    model: str | None = Field(
        None, description="HF id, folder or .safetensors; null: the server's"
    )
    width: int | None = Field(None, ge=64, le=4096, multiple_of=8, description="Null: native size")
    height: int | None = Field(None, ge=64, le=4096, multiple_of=8, description="Null: native size")
    steps: int | None = Field(None, ge=1, le=150, description="Null: by model family")
    guidance_scale: float | None = Field(
        None, ge=0.0, le=30.0, description="CFG; null: by model family"
    )
    sampler: SamplerName = Field("default", description="'default': the model's own")
    seed: int | None = Field(
        None, ge=-1, le=MAX_SEED, description="-1/null: random; image i gets seed+i"
    )
    num_images: int = Field(1, ge=1, le=8, description="Images per call")
    loras: list[LoraRequest] = Field(default_factory=list, max_length=8, description="name: a file in IMGTOOLS_LORA_DIRS, path or HF id")
    control: list[ControlRequest] = Field(
        default_factory=list, max_length=4,
        description="Follow an image's edges/depth/pose (type image: it is the map); start/end: step fractions",
    )
    speed: Literal["quality", "balanced", "fast"] = Field(
        "quality", description="balanced/fast: step caches (UNets and transformers)"
    )
    background: bool = Field(False, description="Return a job id at once; poll get_job")


class GenerateRequest(GenerationParams):
    """Text to image."""

    hires: HiresRequest | None = Field(
        None, description="Hires fix: generate, enlarge by scale, repaint with denoise"
    )
    reference_images: list[ReferenceImage] = reference_images_field()


class EditRequest(GenerationParams):
    """Image + prompt to image (img2img), or an instruction edit on an instruction-edit model."""

    image: str = Field(min_length=1, description=f"Start: {IMAGE_REFERENCE}")
    strength: float = Field(
        0.6, ge=0.0, le=1.0,
        description="0 keeps the input, 1 ignores it; unused by instruction-edit models",
    )
    reference_images: list[ReferenceImage] = reference_images_field()
    width: int | None = Field(
        None, ge=64, le=4096, multiple_of=8,
        description="Null: the input's (aspect kept)",
    )
    height: int | None = Field(
        None, ge=64, le=4096, multiple_of=8,
        description="Null: the input's (aspect kept)",
    )


class Expand(BaseModel):
    """Pixels to add on each side of the image for outpainting."""

    model_config = ConfigDict(extra="forbid")

    left: int = Field(0, ge=0, le=2048)
    right: int = Field(0, ge=0, le=2048)
    top: int = Field(0, ge=0, le=2048)
    bottom: int = Field(0, ge=0, le=2048)

    @model_validator(mode="after")
    def _something_to_add(self) -> "Expand":
        if not (self.left or self.right or self.top or self.bottom):
            raise PydanticCustomError("expand_empty", "needs at least one of left, right, top, bottom > 0")
        return self

    def as_dict(self) -> dict[str, int]:
        return {"left": self.left, "right": self.right, "top": self.top, "bottom": self.bottom}


class InpaintRequest(GenerationParams):
    """Image + mask to image: repaint the masked part (or the new border when expanding), keep the rest."""

    image: str = Field(min_length=1, description=f"Image: {IMAGE_REFERENCE}")
    mask: str | None = Field(
        None, min_length=1,
        description="Mask image (as `image`)",
    )
    mask_prompt: str | None = Field(
        None, min_length=1, max_length=500,
        description="What to repaint, in words",
    )
    mask_shapes: list[MaskShape] | None = Field(
        None, min_length=1, max_length=32,
        description="x, y: top-left; fractions of the image if all values <= 1, else px",
    )
    expand: Expand | None = Field(
        None, description="Outpaint: px to add per side"
    )
    reference_images: list[ReferenceImage] = reference_images_field()
    mask_blur: float = Field(4.0, ge=0.0, le=64.0, description="Feather the mask edge (px)")
    invert_mask: bool = Field(False, description="Repaint the black part instead")
    inpaint_area: Literal["full", "masked"] = Field(
        "full",
        description="masked: work on a crop around the mask (more detail)",
    )
    padding: int = Field(32, ge=0, le=1024, description="masked: context px around the mask")
    strength: float = Field(
        0.99, ge=0.0, le=1.0,
        description="0.99 repaints; 0.5-0.8 keeps colours and layout",
    )
    width: int | None = Field(
        None, ge=64, le=4096, multiple_of=8,
        description="Null: the image's (masked: the model's)",
    )
    height: int | None = Field(
        None, ge=64, le=4096, multiple_of=8,
        description="Null: the image's (masked: the model's)",
    )

    @model_validator(mode="after")
    def _one_mask_source(self) -> "InpaintRequest":
        given = [name for name in ("mask", "mask_shapes", "expand", "mask_prompt") if getattr(self, name) is not None]
        if len(given) != 1:
            got = " and ".join(given) if given else "none"
            raise PydanticCustomError(
                "mask_source",
                "give exactly one of mask (an image), mask_shapes (rect/ellipse list), mask_prompt (what to repaint, found by the VLM) "
                "or expand (outpaint); got {got}",
                {"got": got},
            )
        return self


class StoredImageInfo(BaseModel):
    """An image in the output folder, as every result names it."""

    id: str
    uri: str
    metadata_uri: str
    path: str
    width: int
    height: int

    @classmethod
    def fields_of(cls, stored: StoredImage) -> dict[str, Any]:
        return {"id": stored.id, "uri": stored.uri, "metadata_uri": stored.metadata_uri, "path": str(stored.path),
                "width": stored.width, "height": stored.height}


class ImageInfo(StoredImageInfo):
    seed: int

    @classmethod
    def of(cls, stored: StoredImage, seed: int) -> "ImageInfo":
        return cls(**cls.fields_of(stored), seed=seed)


class GenerationResult(BaseModel):
    """What an image tool returns in structured_content."""

    images: list[ImageInfo] = Field(default_factory=list)
    parameters: dict[str, Any] = Field(default_factory=dict, description="Parameters actually used, after defaults")
    model: dict[str, Any] = Field(default_factory=dict)
    engine: dict[str, Any] = Field(default_factory=dict, description="Device, dtype, backend and memory plan")
    timings: dict[str, float] = Field(default_factory=dict, description="Seconds per phase")
    warnings: list[str] = Field(default_factory=list)
    job_id: str | None = Field(None, description="Set when background=true: poll get_job with it")


UNION_TAGS = {"base": ("generate", "edit", "inpaint")}
"""Fields holding a union tagged by `tool` (sweep's base): pydantic puts the tag in an error's location."""


def _caller_location(loc: tuple[Any, ...]) -> tuple[Any, ...]:
    # base.edit.image names what the caller wrote as base.image
    for index, part in enumerate(loc[:-1]):
        if part in UNION_TAGS and loc[index + 1] in UNION_TAGS[part]:
            return loc[: index + 1] + loc[index + 2 :]
    return loc


def one_line_error(exc: ValidationError) -> str:
    """A pydantic error as one line naming each bad parameter and what is allowed."""
    parts = []
    for error in exc.errors():
        loc = ".".join(str(p) for p in _caller_location(error["loc"])) or "arguments"
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
