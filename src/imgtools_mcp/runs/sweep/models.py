"""sweep's request (a base request of generate, edit or inpaint, tagged by `tool`, and up to three axes) and result."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic_core import PydanticCustomError

from ...params import EditRequest, GenerateRequest, ImageInfo, InpaintRequest, StoredImageInfo

AxisName = Literal["x", "y", "z"]
BaseToolName = Literal["generate", "edit", "inpaint"]
CellStatus = Literal["done", "error", "cancelled"]
MAX_AXIS_VALUES = 1000  # far above any cell limit; keeps a range from building a huge list before that check
RANGE_BOUND = 2.0**53  # a range's ends: every integer parameter (seeds included) fits, and the arithmetic stays finite
AxisValue = float | int | str | bool | list[int] | None


class GenerateBase(GenerateRequest):
    tool: Literal["generate"] = Field("generate", description="The tool each cell runs")


class EditBase(EditRequest):
    tool: Literal["edit"] = Field(description="The tool each cell runs")


class InpaintBase(InpaintRequest):
    tool: Literal["inpaint"] = Field(description="The tool each cell runs")


SweepBase = Annotated[GenerateBase | EditBase | InpaintBase, Field(discriminator="tool")]


class SweepAxis(BaseModel):
    """One axis: a parameter and its values, listed or as an evenly spaced numeric range."""

    model_config = ConfigDict(extra="forbid")

    param: str = Field(
        min_length=1,
        max_length=200,
        description="seed, steps, guidance_scale, sampler, strength, width, height, size ('WxH'), model, prompt, "
        "negative_prompt, prompt_sr (first value found in the prompt, replaced by each value), lora:<name> (its "
        "weight), or another scalar parameter of the base tool",
    )
    values: list[AxisValue] | None = Field(None, min_length=1, max_length=MAX_AXIS_VALUES, description="The values, in order")
    start: float | None = Field(None, allow_inf_nan=False, ge=-RANGE_BOUND, le=RANGE_BOUND, description="Range: first value")
    stop: float | None = Field(None, allow_inf_nan=False, ge=-RANGE_BOUND, le=RANGE_BOUND, description="Range: last value (inclusive)")
    count: int | None = Field(
        None, ge=1, le=MAX_AXIS_VALUES, description="Range: how many evenly spaced values (rounded for integers, sizes to 8)"
    )

    @model_validator(mode="after")
    def _one_form(self) -> "SweepAxis":
        ranged = (self.start, self.stop, self.count)
        if self.values is not None and any(v is not None for v in ranged):
            raise PydanticCustomError("axis_form", "give either values or start/stop/count, not both")
        if self.values is None and any(v is None for v in ranged):
            raise PydanticCustomError("axis_form", "give values, or all of start, stop and count")
        return self


class SweepRequest(BaseModel):
    """A grid of one tool's outputs over up to three parameters."""

    model_config = ConfigDict(extra="forbid")

    tool: BaseToolName = Field("generate", description="The tool each cell runs")
    base: SweepBase = Field(
        description="That tool's arguments, shared by every cell"
    )
    x: SweepAxis = Field(description="Columns")
    y: SweepAxis | None = Field(None, description="Rows")
    z: SweepAxis | None = Field(None, description="A grid per value")
    grid_scale: float = Field(1.0, gt=0.0, le=1.0, description="Grid tile scale; cells stay full size")
    background: bool = Field(False, description="Return a job id at once; poll get_job")

    @model_validator(mode="before")
    @classmethod
    def _tag_the_base(cls, data: Any) -> Any:
        # Callers name the tool beside the base ({tool, base, x}); the base's schema is tagged by it.
        if isinstance(data, dict) and isinstance(data.get("base"), dict):
            base = dict(data["base"])
            tool = data.get("tool", base.get("tool", "generate"))
            if base.setdefault("tool", tool) != tool:
                raise PydanticCustomError("tool_mismatch", "tool and base.tool differ; give the tool once")
            data = {**data, "tool": tool, "base": base}
        return data


class SweepAxisInfo(BaseModel):
    axis: AxisName
    param: str
    values: list[Any]
    labels: list[str]


class SweepCell(BaseModel):
    x: int
    y: int = 0
    z: int = 0
    values: dict[str, Any] = Field(default_factory=dict, description="This cell's value of each swept parameter")
    status: CellStatus
    image: ImageInfo | None = None
    parameters: dict[str, Any] | None = Field(None, description="Parameters used, after defaults")
    error: str | None = None
    seconds: float | None = None


class SweepGrid(StoredImageInfo):
    z: int | None = Field(None, description="The Z value this grid shows; null for the whole sweep")
    title: str = ""
    columns: list[list[int]] = Field(default_factory=list, description="[left, width] of each X column's tiles")
    rows: list[list[int]] = Field(default_factory=list, description="[top, height] of each Y row's tiles")


class SweepResult(BaseModel):
    """What sweep returns in structured_content."""

    tool: str = "generate"
    state: Literal["done", "cancelled", "error", "started"] = "done"
    axes: list[SweepAxisInfo] = Field(default_factory=list)
    cells: list[SweepCell] = Field(default_factory=list, description="Every cell, z-major then rows then columns")
    grids: list[SweepGrid] = Field(default_factory=list, description="The whole sweep first, then one grid per Z value")
    base: dict[str, Any] = Field(default_factory=dict, description="The base arguments every cell started from")
    seed: int | None = None
    run_order: list[str] = Field(default_factory=list, description="Swept parameters from outermost to innermost loop")
    timings: dict[str, float] = Field(default_factory=dict)
    warnings: list[str] = Field(default_factory=list)
    error: str | None = Field(None, description="state=error: what could not be written; the cells listed are kept")
    job_id: str | None = Field(None, description="Set when background=true: poll get_job with it")
