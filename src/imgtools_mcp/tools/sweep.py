"""The `sweep` tool: one base request × up to three axes of values → every cell as a real output, plus labelled grids."""

from __future__ import annotations

import dataclasses
import importlib
import itertools
import logging
import math
import secrets
import time
import typing
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from functools import lru_cache, partial
from typing import Any, Literal

import anyio
import anyio.from_thread
import anyio.to_thread
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp_types import CallToolResult, ResourceLink, ToolAnnotations
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model, model_validator
from pydantic_core import PydanticCustomError

from .. import __version__
from .. import params as params_module
from ..app import AppContext
from ..engine.errors import EngineError, GenerationCancelled
from ..images.grid import GridLayout, SheetLayout, placeholder_tile, plan_grid, plan_sheet, render_grid, render_sheet
from ..images.refs import ResolvedImage, shorten_reference
from ..infotext import format_infotext
from ..jobs import ProgressSink, StopSwitch
from ..params import MAX_SEED, GenerationParams, ImageInfo, one_line_error
from ..store import StoredImage
from .common import StepRelay, app_of, bind_tool, image_blocks, result_of, run_here_or_as_job
from .generation import ImageInputs, PlannedJob, plan_job, run_and_save

log = logging.getLogger(__name__)

AxisName = Literal["x", "y", "z"]
BaseToolName = Literal["generate", "edit", "inpaint"]
CellStatus = Literal["done", "error", "cancelled"]

# Fields of the base request that are not values to compare: inputs are resolved once for all cells,
# and each cell is exactly one image made in the foreground of the sweep.
NOT_SWEEPABLE = {
    "image": "input images are resolved once for all cells",
    "mask": "input images are resolved once for all cells",
    "loras": "use lora:<name> to sweep one LoRA's weight",
    "num_images": "each cell is one image; sweep seed for variations",
    "background": "set background on the sweep itself",
}
SPECIAL_PARAMS = ("size", "prompt_sr", "lora:<name>")
# Cells run sorted by these ranks, outermost first: a model change reloads weights, a LoRA change
# re-fuses adapters, a size change may recompile (OpenVINO); the rest are free to vary.
_RUN_RANK = {"model": 0, "size": 2, "width": 2, "height": 2}
_AXIS_NESTING = {"z": 0, "y": 1, "x": 2}
_MAX_TEXT_ERRORS = 3
_MAX_Z_THUMBNAILS = 4
PREVIEW_EDGE = 768  # the inline thumbnail's long edge


# ----- request and result models -----


class SweepAxis(BaseModel):
    """One axis: a parameter and its values, listed or as an evenly spaced numeric range."""

    model_config = ConfigDict(extra="forbid")

    param: str = Field(
        min_length=1,
        max_length=200,
        description="Parameter to vary: seed, steps, guidance_scale, sampler, strength (edit/inpaint), width, height, "
        "size ('WIDTHxHEIGHT'), model, negative_prompt, prompt, prompt_sr (search/replace: the first value, found in "
        "the prompt, is replaced by each value in turn), lora:<name> (that LoRA's weight), or another scalar parameter "
        "of the base tool",
    )
    values: list[Any] | None = Field(None, min_length=1, description="The values, in order")
    start: float | None = Field(None, description="Numeric range: first value")
    stop: float | None = Field(None, description="Numeric range: last value (inclusive)")
    count: int | None = Field(
        None, ge=1, description="Numeric range: how many evenly spaced values (integers are rounded, sizes to multiples of 8)"
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

    tool: BaseToolName = Field("generate", description="The tool each cell runs: generate, edit or inpaint")
    base: dict[str, Any] = Field(
        description="The base tool's arguments (prompt, model, steps, ...; image/mask for edit and inpaint); "
        "every cell starts from these. Without a seed one is picked for the whole sweep"
    )
    x: SweepAxis = Field(description="Columns: {param, values} or {param, start, stop, count}")
    y: SweepAxis | None = Field(None, description="Rows (optional)")
    z: SweepAxis | None = Field(None, description="One grid per value, plus all of them on one sheet (optional)")
    grid_scale: float = Field(
        1.0, gt=0.0, le=1.0, description="Scale of the tiles in the grid images; the cells are always saved full size"
    )
    background: bool = Field(False, description="Return a job id at once; poll get_job for progress and the result")


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


class SweepGrid(BaseModel):
    id: str
    uri: str
    metadata_uri: str
    path: str
    width: int
    height: int
    z: int | None = Field(None, description="The Z value this grid shows; null for the whole sweep")
    title: str = ""
    columns: list[list[int]] = Field(default_factory=list, description="[left, width] of each X column's tiles")
    rows: list[list[int]] = Field(default_factory=list, description="[top, height] of each Y row's tiles")


class SweepResult(BaseModel):
    """What sweep returns in structured_content."""

    tool: str = "generate"
    state: Literal["done", "cancelled", "started"] = "done"
    axes: list[SweepAxisInfo] = Field(default_factory=list)
    cells: list[SweepCell] = Field(default_factory=list, description="Every cell, z-major then rows then columns")
    grids: list[SweepGrid] = Field(default_factory=list, description="The whole sweep first, then one grid per Z value")
    base: dict[str, Any] = Field(default_factory=dict, description="The base arguments every cell started from")
    seed: int | None = None
    run_order: list[str] = Field(default_factory=list, description="Swept parameters from outermost to innermost loop")
    timings: dict[str, float] = Field(default_factory=dict)
    warnings: list[str] = Field(default_factory=list)
    job_id: str | None = Field(None, description="Set when background=true: poll get_job with it")


# ----- the base tool -----


Prepare = Callable[[AppContext, Any], Awaitable[ImageInputs]]


@dataclass(frozen=True)
class BaseTool:
    name: str
    request_model: type[GenerationParams]
    prepare: Prepare


_REQUEST_MODELS = {"generate": "GenerateRequest", "edit": "EditRequest", "inpaint": "InpaintRequest"}


def _find_base_tool(name: str) -> BaseTool | None:
    """The tool's request model (in params) and its `prepare_inputs(app, request)` (in tools/<name>.py)."""
    request_model = getattr(params_module, _REQUEST_MODELS[name], None)
    try:
        module = importlib.import_module(f"{__package__}.{name}")
    except ModuleNotFoundError:
        return None
    prepare = getattr(module, "prepare_inputs", None)
    if request_model is None or prepare is None:
        return None
    return BaseTool(name, request_model, prepare)


def base_tool(name: str) -> BaseTool:
    found = _find_base_tool(name)
    if found is None:
        available = [tool for tool in _REQUEST_MODELS if _find_base_tool(tool) is not None]
        raise ToolError(f"tool: {name!r} cannot be swept on this server; available: {', '.join(available)}")
    return found


@lru_cache(maxsize=8)
def _base_wrapper(request_model: type[BaseModel]) -> type[BaseModel]:
    # Validating through a wrapper puts "base." in front of every error location.
    return create_model(f"Sweep{request_model.__name__}", base=(request_model, ...))


class _ResolveOnce:
    """The server's image resolver, remembering each reference: every cell of a sweep shares one fetch and decode."""

    def __init__(self, resolver: Any) -> None:
        self._resolver = resolver
        self._seen: dict[tuple[str, str], ResolvedImage] = {}

    async def resolve(self, ref: str, *, param: str, mode: str = "RGB") -> ResolvedImage:
        key = (ref, mode)
        if key not in self._seen:
            self._seen[key] = await self._resolver.resolve(ref, param=param, mode=mode)
        return self._seen[key]

    def __getattr__(self, name: str) -> Any:
        return getattr(self._resolver, name)


# ----- axes -----


@dataclass
class Axis:
    name: AxisName
    param: str
    values: list[Any]
    labels: list[str]
    search: str | None = None  # prompt_sr: the text each value replaces


def _numeric_kind(request_model: type[BaseModel], param: str) -> type | None:
    if param.startswith("lora:"):
        return float
    info = request_model.model_fields.get(param)
    if info is None:
        return None
    options = typing.get_args(info.annotation) or (info.annotation,)
    if float in options:
        return float
    if int in options:
        return int
    return None


def _range_values(axis: SweepAxis, kind: type, param: str) -> list[Any]:
    assert axis.start is not None and axis.stop is not None and axis.count is not None
    count = axis.count
    raw = [axis.start] if count == 1 else [axis.start + (axis.stop - axis.start) * i / (count - 1) for i in range(count)]
    if kind is float:
        return [round(value, 6) for value in raw]
    if param in ("width", "height"):
        return [int(math.floor(value / 8 + 0.5)) * 8 for value in raw]
    return [int(math.floor(value + 0.5)) for value in raw]


def _display(param: str, value: Any) -> str:
    if value is None:
        return "default"
    if isinstance(value, float):
        return f"{value:g}"
    if param == "model" and isinstance(value, str) and ("/" in value or "\\" in value) and (
        value.startswith(("/", ".", "~")) or value.endswith((".safetensors", ".ckpt")) or ":" in value[:3]
    ):
        return value.replace("\\", "/").rstrip("/").rsplit("/", 1)[-1]
    if isinstance(value, list):
        return "x".join(str(v) for v in value) if param == "size" else str(value)
    return str(value)


def _targets(param: str) -> set[str]:
    if param == "size":
        return {"width", "height"}
    if param == "prompt_sr":
        return set()  # several search/replace axes may act on one prompt
    return {param}


def resolve_axes(request: SweepRequest, tool: BaseTool, base: GenerationParams, max_cells: int) -> list[Axis]:
    """Check each axis up front (name, form, prompt_sr's search text, the cell limit) and list its values."""
    fields = tool.request_model.model_fields
    sweepable = [name for name in fields if name not in NOT_SWEEPABLE]
    axes: list[Axis] = []
    claimed: dict[str, str] = {}
    for name in ("x", "y", "z"):
        spec: SweepAxis | None = getattr(request, name)
        if spec is None:
            continue
        param = spec.param.strip()
        if param in NOT_SWEEPABLE:
            raise ToolError(f"{name}.param: {param!r} cannot be swept ({NOT_SWEEPABLE[param]})")
        if param.startswith("lora:"):
            if not param[len("lora:") :].strip():
                raise ToolError(f"{name}.param: name the LoRA, as lora:<name>")
        elif param not in fields and param not in SPECIAL_PARAMS:
            raise ToolError(
                f"{name}.param: {param!r} is not a parameter of {tool.name}; allowed: "
                f"{', '.join([*sweepable, *SPECIAL_PARAMS])}"
            )
        for target in _targets(param):
            if target in claimed:
                raise ToolError(f"{name}.param: {param!r} is already swept on {claimed[target]}")
            claimed[target] = name
        if spec.values is not None:
            values = list(spec.values)
        else:
            kind = _numeric_kind(tool.request_model, param)
            if kind is None:
                raise ToolError(f"{name}: start/stop/count need a numeric parameter; give values for {param!r}")
            values = _range_values(spec, kind, param)
        search = None
        if param == "prompt_sr":
            values = [str(value) for value in values]
            search = values[0]
            if not search or (search not in base.prompt and search not in base.negative_prompt):
                raise ToolError(
                    f"{name}.values: prompt_sr replaces its first value, {search!r}, which must occur in "
                    "base.prompt or base.negative_prompt"
                )
        labels = [f"{param}: {_display(param, value)}" for value in values]
        axes.append(Axis(name, param, values, labels, search))
    counts = [len(axis.values) for axis in axes]
    total = math.prod(counts)
    if total > max_cells:
        shape = " × ".join(f"{axis.name} {len(axis.values)}" for axis in axes)
        raise ToolError(f"{total} cells ({shape}) exceed IMGTOOLS_MAX_SWEEP_CELLS={max_cells}; use fewer values")
    return axes


def _parse_size(value: Any) -> tuple[int, int]:
    if isinstance(value, str):
        parts = value.lower().replace("×", "x").split("x")
        if len(parts) == 2 and all(part.strip().isdigit() for part in parts):
            return int(parts[0]), int(parts[1])
    elif isinstance(value, list | tuple) and len(value) == 2 and all(isinstance(v, int) for v in value):
        return int(value[0]), int(value[1])
    raise ValueError(f"size: expected 'WIDTHxHEIGHT' such as '512x768' (got {value!r})")


def cell_arguments(base_args: dict[str, Any], assignments: list[tuple[Axis, Any]]) -> dict[str, Any]:
    """The base tool's arguments for one cell: the base with each axis's value applied, in axis order."""
    args = dict(base_args)
    for axis, value in assignments:
        param = axis.param
        if param == "size":
            args["width"], args["height"] = _parse_size(value)
        elif param == "prompt_sr":
            assert axis.search is not None
            args["prompt"] = str(args.get("prompt", "")).replace(axis.search, value)
            args["negative_prompt"] = str(args.get("negative_prompt") or "").replace(axis.search, value)
        elif param.startswith("lora:"):
            name = param[len("lora:") :].strip()
            loras = [dict(lora) for lora in args.get("loras") or []]
            for lora in loras:
                if lora.get("name") == name:
                    lora["weight"] = value
                    break
            else:
                loras.append({"name": name, "weight": value})
            args["loras"] = loras
        else:
            args[param] = value
    return args


# ----- the plan -----


@dataclass
class Cell:
    coords: dict[str, int]
    values: dict[str, Any]
    request: GenerationParams | None = None
    # Checked up front, then prepared again when the cell runs: holding every cell's input images
    # (an inpaint canvas and masks per cell) for the whole sweep would cost far more than preparing twice.
    size: tuple[int, int] | None = None
    used: dict[str, Any] | None = None
    status: CellStatus | Literal["pending"] = "pending"
    error: str | None = None
    units: float = 0.0  # its share of the progress bar: its planned steps
    offset: float = 0.0
    image: ImageInfo | None = None
    parameters: dict[str, Any] | None = None
    tile: Image.Image | None = None
    stored: StoredImage | None = None
    seconds: float | None = None

    def coord(self, axis: str) -> int:
        return self.coords.get(axis, 0)

    def tile_size(self, scale: float) -> tuple[int, int] | None:
        if self.size is None:
            return None
        return max(1, round(self.size[0] * scale)), max(1, round(self.size[1] * scale))

    def info(self) -> SweepCell:
        status: CellStatus = "cancelled" if self.status == "pending" else self.status
        return SweepCell(
            x=self.coord("x"),
            y=self.coord("y"),
            z=self.coord("z"),
            values=self.values,
            status=status,
            image=self.image,
            parameters=self.parameters if self.parameters is not None else self.used,
            error=self.error if status != "cancelled" else (self.error or "cancelled before this cell ran"),
            seconds=self.seconds,
        )


@dataclass
class SweepPlan:
    tool: BaseTool
    app: AppContext  # the server's, with a resolver that remembers the base's input images
    sweep_id: str
    base: GenerationParams
    base_args: dict[str, Any]

    @property
    def reported_base(self) -> dict[str, Any]:
        """The base as results and sidecars show it: a megabyte of base64 image input is shortened, as every tool does."""
        return {
            name: shorten_reference(value) if name in ("image", "mask") and isinstance(value, str) else value
            for name, value in self.base_args.items()
        }
    seed: int
    axes: list[Axis]
    cells: list[Cell]
    run_order: list[Cell]
    order_params: list[str]
    grid_scale: float
    layouts: list[GridLayout]
    sheet: SheetLayout | None
    total_units: float
    warnings: list[str] = field(default_factory=list)

    def axis(self, name: str) -> Axis | None:
        return next((axis for axis in self.axes if axis.name == name), None)

    def cells_of(self, z: int) -> list[Cell]:
        return [cell for cell in self.cells if cell.coord("z") == z]


def _errors_of(exc: BaseException) -> str:
    if isinstance(exc, ValidationError):
        return one_line_error(exc)
    return str(exc) or type(exc).__name__


async def plan_sweep(app: AppContext, request: SweepRequest) -> SweepPlan:
    """Everything that can be checked before any pixel is made: base, axes, every cell's parameters, grid sizes."""
    tool = base_tool(request.tool)
    try:
        base = _base_wrapper(tool.request_model).model_validate({"base": request.base}).base
    except ValidationError as exc:
        raise ToolError(one_line_error(exc)) from None
    if base.num_images != 1:
        raise ToolError(f"base.num_images: a sweep makes one image per cell (got {base.num_images}); sweep seed for variations")
    if base.background:
        raise ToolError("base.background: set background on the sweep itself")
    seed = base.seed if base.seed is not None and base.seed >= 0 else secrets.randbelow(MAX_SEED + 1 - 8)
    base = base.model_copy(update={"seed": seed})
    axes = resolve_axes(request, tool, base, app.settings.max_sweep_cells)
    warnings = []
    for axis in axes:
        repeated = [label for label, times in Counter(axis.labels).items() if times > 1]
        if repeated:  # allowed (a seed repeated checks determinism), but usually a range rounded together
            warnings.append(f"{axis.name}: {', '.join(repeated)} more than once")

    # Image references resolve here, once, and a bad one fails the call before any cell runs.
    sweep_app = dataclasses.replace(app, resolver=_ResolveOnce(app.resolver))
    await tool.prepare(sweep_app, base)
    base_args = base.model_dump(mode="json")

    cells: list[Cell] = []
    by_name = {axis.name: axis for axis in axes}
    ranges = [range(len(by_name[name].values)) if name in by_name else range(1) for name in ("z", "y", "x")]
    for z, y, x in itertools.product(*ranges):
        coords = {name: index for name, index in (("x", x), ("y", y), ("z", z)) if name in by_name}
        assignments = [(axis, axis.values[coords[axis.name]]) for axis in axes]
        cell = Cell(coords=coords, values={axis.param: value for axis, value in assignments})
        try:
            cell.request = tool.request_model.model_validate(cell_arguments(base_args, assignments))
            _, planned = await _plan_cell(sweep_app, tool, cell.request)
        except (ToolError, ValueError, EngineError) as exc:  # a bad value spoils its own cell, not the sweep
            cell.status, cell.error = "error", _errors_of(exc)
        except Exception as exc:  # unexpected, so logged in full; still only this cell is lost
            cell.status, cell.error = "error", _errors_of(exc)
            log.warning("sweep cell %s cannot run: %s", coords, cell.error, exc_info=True)
        else:
            cell.size, cell.used = (planned.job.width, planned.job.height), planned.used
            cell.units = float(planned.job.steps)
        cells.append(cell)
    if all(cell.size is None for cell in cells):
        distinct = list(dict.fromkeys(cell.error for cell in cells if cell.error))
        raise ToolError(f"no cell of the sweep can run: {'; '.join(distinct[:_MAX_TEXT_ERRORS])}")

    ordered_axes = sorted(axes, key=lambda axis: (_run_rank(axis.param), _AXIS_NESTING[axis.name]))
    run_order = sorted(cells, key=lambda cell: tuple(cell.coord(axis.name) for axis in ordered_axes))
    offset = 0.0
    for cell in run_order:
        cell.offset = offset
        offset += cell.units

    layouts, sheet = plan_layouts(axes, cells, request.grid_scale)
    _check_pixels(layouts, sheet, request.grid_scale, app.settings.max_grid_pixels)
    return SweepPlan(
        tool=tool,
        app=sweep_app,
        sweep_id=f"sweep-{secrets.token_hex(6)}",
        base=base,
        base_args=base_args,
        seed=seed,
        axes=axes,
        cells=cells,
        run_order=run_order,
        order_params=[axis.param for axis in ordered_axes],
        grid_scale=request.grid_scale,
        layouts=layouts,
        sheet=sheet,
        total_units=offset,
        warnings=warnings,
    )


async def _plan_cell(app: AppContext, tool: BaseTool, request: GenerationParams) -> tuple[ImageInputs, PlannedJob]:
    inputs = await tool.prepare(app, request)
    await app.engine.aresolve(request.model)  # a new model may scan folders or download; not on the event loop
    return inputs, plan_job(app, request, inputs)


def _run_rank(param: str) -> int:
    if param.startswith("lora:"):
        return 1
    return _RUN_RANK.get(param, 3)


# ----- grids -----


def plan_layouts(axes: list[Axis], cells: list[Cell], scale: float) -> tuple[list[GridLayout], SheetLayout | None]:
    """One layout per Z value (all sharing column widths and row heights), and the sheet that holds them."""
    by_name = {axis.name: axis for axis in axes}
    x_axis, y_axis, z_axis = by_name["x"], by_name.get("y"), by_name.get("z")
    sizes = [size for cell in cells if (size := cell.tile_size(scale)) is not None]
    fallback = Counter(sizes).most_common(1)[0][0]
    columns = len(x_axis.values)
    rows = len(y_axis.values) if y_axis else 1
    widths = [max((s[0] for c in cells if c.coord("x") == i and (s := c.tile_size(scale))), default=fallback[0]) for i in range(columns)]
    heights = [max((s[1] for c in cells if c.coord("y") == j and (s := c.tile_size(scale))), default=fallback[1]) for j in range(rows)]
    row_labels = y_axis.labels if y_axis else [""]
    titles = z_axis.labels if z_axis else [""]
    layouts = [plan_grid(widths, heights, x_axis.labels, row_labels, title) for title in titles]
    sheet = None
    if z_axis is not None:
        sheet = plan_sheet([layout.size for layout in layouts], gap=layouts[0].font_size)
    return layouts, sheet


def _check_pixels(layouts: list[GridLayout], sheet: SheetLayout | None, scale: float, limit: int) -> None:
    width, height = sheet.size if sheet is not None else layouts[0].size
    pixels = width * height
    if pixels > limit:
        # Tiles shrink with grid_scale, margins do not; 0.95 leaves room for them.
        suggestion = math.floor(scale * math.sqrt(limit / pixels) * 0.95 * 100) / 100
        hint = f"set grid_scale to {suggestion:g} or less, or use" if suggestion >= 0.01 else "use"
        raise ToolError(
            f"grid: {width}x{height} = {pixels} pixels exceeds IMGTOOLS_MAX_GRID_PIXELS={limit}; {hint} fewer or smaller cells"
        )


def _tile_of(cell: Cell, layout: GridLayout, scale: float) -> Image.Image:
    if cell.tile is not None:
        return cell.tile
    box = layout.tile_box(cell.coord("y"), cell.coord("x"))
    size = cell.tile_size(scale) or (box[2], box[3])
    text = cell.error if cell.status == "error" else "cancelled"
    return placeholder_tile(size, text or "not made")


def render_grids(
    plan: SweepPlan, layouts: list[GridLayout], sheet_layout: SheetLayout | None, scale: float
) -> list[tuple[Image.Image, int | None, str, GridLayout | None]]:
    """(image, z index or None for the whole sweep, title, layout) for each grid, the whole sweep first."""
    z_axis = plan.axis("z")
    grids: list[tuple[Image.Image, int | None, str, GridLayout | None]] = []
    for z, layout in enumerate(layouts):
        tiles: list[list[Image.Image | None]] = [[None] * len(layout.column_widths) for _ in layout.row_heights]
        for cell in plan.cells_of(z):
            tiles[cell.coord("y")][cell.coord("x")] = _tile_of(cell, layout, scale)
        title = z_axis.labels[z] if z_axis else ""
        grids.append((render_grid(layout, tiles), z if z_axis else None, title, layout))
    if sheet_layout is not None:
        sheet = render_sheet(sheet_layout, [image for image, *_ in grids])
        grids.insert(0, (sheet, None, "all", None))
    return grids


def render_previews(plan: SweepPlan) -> list[Image.Image] | None:
    """The grids again at thumbnail size, laid out afresh so the labels stay legible (a shrunken full grid's are not);
    None when the grids are small enough to be their own thumbnails."""
    scale = plan.grid_scale
    layouts, sheet = plan.layouts, plan.sheet
    for _ in range(4):  # margins do not shrink with the tiles, so converge in a few steps
        longest = max(sheet.size if sheet is not None else layouts[0].size)
        if longest <= PREVIEW_EDGE:
            break
        scale *= PREVIEW_EDGE / longest * 0.98
        layouts, sheet = plan_layouts(plan.axes, plan.cells, scale)
    if scale == plan.grid_scale:
        return None
    return [image for image, *_ in render_grids(plan, layouts, sheet, scale)]


_INFOTEXT_KEYS = {"steps": "Steps", "sampler": "Sampler", "guidance_scale": "CFG scale", "seed": "Seed",
                  "width": "Size", "height": "Size", "size": "Size", "model": "Model"}


def _grid_infotext(plan: SweepPlan, done: int) -> str:
    """A1111's X/Y/Z plot infotext: the fixed base parameters, then each axis's type and values."""
    base = plan.base
    fields: dict[str, Any] = {
        "Steps": base.steps,
        "Sampler": base.sampler if base.sampler != "default" else None,
        "CFG scale": base.guidance_scale,
        "Seed": plan.seed,
        "Size": f"{base.width}x{base.height}" if base.width and base.height else None,
        "Model": _display("model", base.model) if base.model else None,
    }
    for axis in plan.axes:  # a swept parameter has no single value to report
        fields.pop(_INFOTEXT_KEYS.get(axis.param, ""), None)
    fields["Script"] = "X/Y/Z plot"
    for axis in plan.axes:
        fields[f"{axis.name.upper()} Type"] = axis.param
        fields[f"{axis.name.upper()} Values"] = ", ".join(_display(axis.param, value) for value in axis.values)
    fields.update({"Sweep": plan.sweep_id, "Cells": f"{done}/{len(plan.cells)}", "Version": f"imgtools-mcp {__version__}"})
    return format_infotext(base.prompt, base.negative_prompt, fields)


# ----- running -----


class CellRelay(StepRelay):
    """Per-step progress over the whole sweep: each cell fills its share (its planned steps) of one bar."""

    def __init__(self, sink: ProgressSink | None, grand_total: float) -> None:
        super().__init__(sink, grand_total)
        self.units = 0.0
        self.reported = 0.0

    def on_step(self, step: int, total: int) -> None:
        # img2img runs fewer steps than asked (steps × strength), so a cell's steps are scaled to its share.
        progress = self.offset + self.units * min(step, total) / max(total, 1)
        self.reported = progress
        anyio.from_thread.run_sync(self.post, progress, f"{self.prefix}step {step} / {total}")


async def _run_cells(app: AppContext, plan: SweepPlan, relay: CellRelay, stop: StopSwitch) -> None:
    total = len(plan.run_order)
    with anyio.CancelScope() as scope:
        stop.attach(scope)
        for number, cell in enumerate(plan.run_order, start=1):
            if stop.requested:
                break
            if cell.status != "pending":
                continue
            assert cell.request is not None
            relay.offset, relay.units, relay.prefix = cell.offset, cell.units, f"cell {number} / {total}, "
            started = time.perf_counter()
            try:
                inputs, planned = await _plan_cell(plan.app, plan.tool, cell.request)
                inputs.metadata = {**inputs.metadata, "sweep": {"id": plan.sweep_id, **cell.coords, "values": cell.values}}
                produced = await run_and_save(app, plan.tool.name, planned, inputs, relay)
            except GenerationCancelled:
                break
            except Exception as exc:  # an engine failure spoils this cell only; the error is kept in its tile
                cell.status, cell.error = "error", _errors_of(exc)
                log.warning("sweep %s cell %s failed: %s", plan.sweep_id, cell.coords, cell.error)
            else:
                cell.status = "done"
                cell.image = produced.result.images[0]
                cell.parameters = produced.result.parameters
                cell.stored = produced.stored[0]
                image = produced.images[0]
                if plan.grid_scale != 1.0:
                    size = (max(1, round(image.width * plan.grid_scale)), max(1, round(image.height * plan.grid_scale)))
                    image = image.resize(size, Image.Resampling.LANCZOS)
                cell.tile = image
            cell.seconds = round(time.perf_counter() - started, 4)
    stop.attach(None)
    if scope.cancelled_caught:
        log.info("sweep %s stopped on request", plan.sweep_id)


async def run_sweep(app: AppContext, plan: SweepPlan, sink: ProgressSink | None, stop: StopSwitch) -> CallToolResult:
    """Run every cell in plan order, then save and return the grids; a cancelled sweep still saves what it made."""
    started = time.perf_counter()
    relay = CellRelay(sink, grand_total=plan.total_units)
    try:
        async with relay.running():
            await _run_cells(app, plan, relay, stop)
            if not stop.requested and plan.total_units > relay.reported:
                relay.post(plan.total_units, f"cell {len(plan.cells)} / {len(plan.cells)}, done")
    except anyio.get_cancelled_exc_class():
        # The caller is gone (or the server is stopping); the finished cells are on disk, and the grid and
        # its sidecar list them.
        with anyio.CancelScope(shield=True):
            await _finish(app, plan, "cancelled", started)
        raise
    return await _finish(app, plan, "cancelled" if stop.requested else "done", started)


async def _finish(app: AppContext, plan: SweepPlan, state: Literal["done", "cancelled"], started: float) -> CallToolResult:
    for cell in plan.cells:
        if cell.status == "pending":
            cell.status = "cancelled"
    cells = [cell.info() for cell in plan.cells]
    done = sum(cell.status == "done" for cell in plan.cells)
    axes = [SweepAxisInfo(axis=a.name, param=a.param, values=a.values, labels=a.labels) for a in plan.axes]
    grid_started = time.perf_counter()

    def render_and_save() -> list[tuple[StoredImage, Image.Image, int | None, str, GridLayout | None]]:
        saved = []
        infotext = _grid_infotext(plan, done)
        grids = render_grids(plan, plan.layouts, plan.sheet, plan.grid_scale)
        previews = render_previews(plan) or [image for image, *_ in grids]
        for preview, (image, z, title, layout) in zip(previews, grids, strict=True):
            shown = [info for info in cells if z is None or info.z == z]
            metadata = {
                "tool": "sweep",
                "sweep": {
                    "id": plan.sweep_id,
                    "tool": plan.tool.name,
                    "state": state,
                    "z": z,
                    "title": title,
                    "base": plan.reported_base,
                    "axes": [axis.model_dump(mode="json") for axis in axes],
                    "grid_scale": plan.grid_scale,
                },
                "cells": [info.model_dump(mode="json") for info in shown],
            }
            saved.append((app.store.save(image, infotext, metadata), preview, z, title, layout))
        return saved

    saved = await anyio.to_thread.run_sync(render_and_save)
    grids = [
        SweepGrid(
            id=stored.id,
            uri=stored.uri,
            metadata_uri=stored.metadata_uri,
            path=str(stored.path),
            width=stored.width,
            height=stored.height,
            z=z,
            title=title,
            columns=[[left, width] for left, width in zip(layout.column_lefts, layout.column_widths)] if layout else [],
            rows=[[top, height] for top, height in zip(layout.row_tops, layout.row_heights)] if layout else [],
        )
        for stored, _, z, title, layout in saved
    ]
    timings = {
        "cells_s": round(sum(cell.seconds or 0.0 for cell in plan.cells), 4),
        "grid_s": round(time.perf_counter() - grid_started, 4),
        "total_s": round(time.perf_counter() - started, 4),
    }
    result = SweepResult(
        tool=plan.tool.name,
        state=state,
        axes=axes,
        cells=cells,
        grids=grids,
        base=plan.reported_base,
        seed=plan.seed,
        run_order=plan.order_params,
        timings=timings,
        warnings=plan.warnings,
    )
    return result_of(_summary(plan, result), _blocks(plan, saved), result)


def _summary(plan: SweepPlan, result: SweepResult) -> str:
    counts = Counter(cell.status for cell in result.cells)
    shape = " × ".join(f"{axis.param} ({len(axis.values)})" for axis in plan.axes)
    grid = result.grids[0]
    text = (
        f"sweep of {plan.tool.name} over {shape}: {counts['done']}/{len(result.cells)} cells made"
        + (f", {counts['error']} failed" if counts["error"] else "")
        + (f", {counts['cancelled']} cancelled" if counts["cancelled"] else "")
        + f"; grid {grid.id} {grid.width}x{grid.height}; seed {plan.seed}; {result.timings['total_s']:.1f} s"
    )
    errors = [
        f"({', '.join(f'{k}={v}' for k, v in (('x', c.x), ('y', c.y), ('z', c.z)) if plan.axis(k))}) {c.error}"
        for c in result.cells
        if c.status == "error"
    ]
    if errors:
        more = f" (+{len(errors) - _MAX_TEXT_ERRORS} more)" if len(errors) > _MAX_TEXT_ERRORS else ""
        text += " — errors: " + "; ".join(errors[:_MAX_TEXT_ERRORS]) + more
    if result.warnings:
        text += " — " + "; ".join(result.warnings)
    return text


def _blocks(plan: SweepPlan, saved: list[tuple[StoredImage, Image.Image, int | None, str, GridLayout | None]]) -> list[Any]:
    """Thumbnails (from the previews) for the grids only, to keep within the inline budget; links to every grid and cell."""
    shown = saved if len(saved) <= 1 + _MAX_Z_THUMBNAILS else saved[:1]
    blocks = image_blocks([item[0] for item in shown], [item[1] for item in shown])
    for stored, _, _, title, _ in saved[len(shown) :]:
        blocks.append(_link(stored, f"grid {title}"))
    for cell in plan.cells:
        if cell.stored is not None:
            labels = ", ".join(f"{param}: {_display(param, value)}" for param, value in cell.values.items())
            blocks.append(_link(cell.stored, labels))
    return blocks


def _link(stored: StoredImage, title: str) -> ResourceLink:
    return ResourceLink(
        type="resource_link",
        uri=stored.uri,
        name=stored.id,
        title=f"{title} ({stored.width}x{stored.height} PNG)",
        mime_type="image/png",
        size=stored.path.stat().st_size,
    )


# ----- the tool -----

DESCRIPTION = """Compare parameter values: run one base request (of generate, edit or inpaint) for every combination of
up to three axes and get every cell as an output plus a labelled grid (X columns, Y rows, one grid per Z value and a
sheet of all). Axes: {param, values: [...]} or {param, start, stop, count}; params: seed, steps, guidance_scale,
sampler, strength, width, height, size ('WxH'), model, negative_prompt, prompt, prompt_sr (first value is searched in
the prompt and replaced by each value), lora:<name> (weight). One seed is used for every cell unless seed is swept.
Invalid values become labelled placeholder tiles; cancelling keeps the finished cells and a grid of them.
Costs one generation per cell; use background=true for long sweeps and poll get_job."""


async def handle(request: SweepRequest, ctx: Context) -> CallToolResult:
    app = app_of(ctx)
    plan = await plan_sweep(app, request)

    def started(job_id: str) -> CallToolResult:
        ticket = SweepResult(
            tool=plan.tool.name,
            state="started",
            axes=[SweepAxisInfo(axis=a.name, param=a.param, values=a.values, labels=a.labels) for a in plan.axes],
            base=plan.reported_base,
            seed=plan.seed,
            run_order=plan.order_params,
            job_id=job_id,
        )
        text = f"sweep: started job {job_id} ({len(plan.cells)} cells); poll get_job for progress and the result"
        return result_of(text, [], ticket)

    return await run_here_or_as_job(app, ctx, "sweep", request.background, partial(run_sweep, app, plan), started)


def register(server: MCPServer) -> None:
    bind_tool(
        server,
        SweepRequest,
        handle,
        name="sweep",
        title="Parameter sweep",
        description=DESCRIPTION,
        output_model=SweepResult,
        annotations=ToolAnnotations(
            title="Parameter sweep", read_only_hint=False, destructive_hint=False, idempotent_hint=False, open_world_hint=False
        ),
    )
