"""The plan of a sweep: the base checked, every cell's arguments checked up front, the run order and the grid sizes.

Two parts: `check_sweep` needs no model (the axes, the cell count, the base's own limits and image references)
and runs before a background job's id is returned; `plan_sweep` resolves each cell's model (which may download
it) and runs inside the job.
"""

from __future__ import annotations

import itertools
import logging
import secrets
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Literal

import anyio.to_thread
from PIL import Image
from pydantic import ValidationError

from ...engine.errors import EngineError
from ...engine.request import ProgressCallback
from ...images.grid import GridLayout, SheetLayout
from ...images.refs import shorten_reference
from ...params import GenerationParams, ImageInfo, one_line_error
from ...store import StoredImage
from ..context import RunContext, RunInputError
from ..image_run import ImagePlan, Prepare, check, model_family, pick_seed
from ..inputs import ImageInputs
from ..prepare import preparation_of, references_of
from .axes import Axis, cell_arguments, resolve_axes
from .layout import check_pixels, plan_layouts
from .models import CellStatus, SweepCell, SweepRequest

log = logging.getLogger(__name__)

# Cells run sorted by these ranks, outermost first: a model change reloads weights, a LoRA change
# re-fuses adapters, a size change may recompile (OpenVINO); the rest are free to vary.
_RUN_RANK = {"model": 0, "size": 2, "width": 2, "height": 2}
_AXIS_NESTING = {"z": 0, "y": 1, "x": 2}
MAX_TEXT_ERRORS = 3


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
class CheckedSweep:
    """What a sweep is, checked without its model: enough to describe the job before it runs."""

    tool: str
    prepare: Prepare
    base: GenerationParams
    seed: int
    axes: list[Axis]
    ordered_axes: list[Axis]
    grid_scale: float

    @property
    def cell_count(self) -> int:
        count = 1
        for axis in self.axes:
            count *= len(axis.values)
        return count

    @property
    def order_params(self) -> list[str]:
        return [axis.param for axis in self.ordered_axes]

    @property
    def reported_base(self) -> dict[str, Any]:
        return _reported(self.base.model_dump(mode="json"))


def _reported(base_args: dict[str, Any]) -> dict[str, Any]:
    """The base as results and sidecars show it: a megabyte of base64 image input is shortened, as every tool does."""
    return {
        name: shorten_reference(value) if name in ("image", "mask") and isinstance(value, str) else value
        for name, value in base_args.items()
        if name != "tool"
    }


@dataclass
class SweepPlan:
    tool: str
    prepare: Prepare
    sweep_id: str
    base: GenerationParams
    base_args: dict[str, Any]
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

    @property
    def reported_base(self) -> dict[str, Any]:
        return _reported(self.base_args)

    def axis(self, name: str) -> Axis | None:
        return next((axis for axis in self.axes if axis.name == name), None)

    def cells_of(self, z: int) -> list[Cell]:
        return [cell for cell in self.cells if cell.coord("z") == z]


def error_text(exc: BaseException) -> str:
    if isinstance(exc, ValidationError):
        return one_line_error(exc)
    return str(exc) or type(exc).__name__


async def plan_cell(
    ctx: RunContext, prepare: Prepare, request: GenerationParams, on_progress: ProgressCallback | None = None
) -> tuple[ImageInputs, ImagePlan]:
    inputs = await prepare(ctx, request, await model_family(ctx, request.model, on_progress))
    return inputs, await check(ctx, request, inputs, on_progress)


def _run_rank(param: str) -> int:
    if param.startswith("lora:"):
        return 1
    return _RUN_RANK.get(param, 3)


def _repeats(axes: list[Axis]) -> list[str]:
    warnings = []
    for axis in axes:
        repeated = [label for label, times in Counter(axis.labels).items() if times > 1]
        if repeated:  # allowed (a seed repeated checks determinism), but usually a range rounded together
            warnings.append(f"{axis.name}: {', '.join(repeated)} more than once")
    return warnings


async def _plan_cells(
    ctx: RunContext, prepare: Prepare, base: GenerationParams, axes: list[Axis], on_progress: ProgressCallback | None
) -> list[Cell]:
    base_args = base.model_dump(mode="json")
    by_name = {axis.name: axis for axis in axes}
    ranges = [range(len(by_name[name].values)) if name in by_name else range(1) for name in ("z", "y", "x")]
    cells: list[Cell] = []
    for z, y, x in itertools.product(*ranges):
        coords = {name: index for name, index in (("x", x), ("y", y), ("z", z)) if name in by_name}
        assignments = [(axis, axis.values[coords[axis.name]]) for axis in axes]
        cell = Cell(coords=coords, values={axis.param: value for axis, value in assignments})
        try:
            cell.request = type(base).model_validate(cell_arguments(base_args, assignments))
            _, planned = await plan_cell(ctx, prepare, cell.request, on_progress)
        except (RunInputError, ValueError, EngineError) as exc:  # a bad value spoils its own cell, not the sweep
            cell.status, cell.error = "error", error_text(exc)
        except Exception as exc:  # unexpected, so logged in full; still only this cell is lost
            cell.status, cell.error = "error", error_text(exc)
            log.warning("sweep cell %s cannot run: %s", coords, cell.error, exc_info=True)
        else:
            cell.size, cell.used = (planned.job.width, planned.job.height), planned.used
            cell.units = float(planned.job.steps)
        cells.append(cell)
    return cells


async def check_sweep(ctx: RunContext, request: SweepRequest) -> CheckedSweep:
    """What can be checked without a model: the base's own limits, the axes and cell count, the image references.

    `ctx.resolver` should remember what it resolves: every cell then shares one fetch of each input image.
    """
    base: GenerationParams = request.base
    tool, prepare = preparation_of(base)
    if base.num_images != 1:
        raise RunInputError(f"base.num_images: a sweep makes one image per cell (got {base.num_images}); sweep seed for variations")
    if base.background:
        raise RunInputError("base.background: set background on the sweep itself")
    seed = pick_seed(base.seed)
    base = base.model_copy(update={"seed": seed})
    specs = {"x": request.x, "y": request.y, "z": request.z}
    axes = resolve_axes(specs, tool, type(base), base.prompt, base.negative_prompt, ctx.settings.max_sweep_cells)
    # Image references resolve here, once, and a bad one fails the call before any cell runs.
    for ref, param, mode in references_of(base):
        await ctx.resolver.resolve(ref, param=param, mode=mode)
    ordered_axes = sorted(axes, key=lambda axis: (_run_rank(axis.param), _AXIS_NESTING[axis.name]))
    return CheckedSweep(tool, prepare, base, seed, axes, ordered_axes, request.grid_scale)


async def plan_sweep(ctx: RunContext, checked: CheckedSweep, on_progress: ProgressCallback | None = None) -> SweepPlan:
    """Everything else that can be checked before any pixel is made: every cell's model and parameters, grid sizes.

    Resolving a cell's model may download it (minutes), which `on_progress` hears; `ctx.resolver` should be the
    one `check_sweep` filled, so the input images are not fetched again.
    """
    tool, prepare, base, axes, ordered_axes = checked.tool, checked.prepare, checked.base, checked.axes, checked.ordered_axes
    await prepare(ctx, base, await model_family(ctx, base.model, on_progress))
    cells = await _plan_cells(ctx, prepare, base, axes, on_progress)
    if all(cell.size is None for cell in cells):
        distinct = list(dict.fromkeys(cell.error for cell in cells if cell.error))
        raise RunInputError(f"no cell of the sweep can run: {'; '.join(distinct[:MAX_TEXT_ERRORS])}")

    run_order = sorted(cells, key=lambda cell: tuple(cell.coord(axis.name) for axis in ordered_axes))
    offset = 0.0
    for cell in run_order:
        cell.offset = offset
        offset += cell.units

    # Laying out labels measures text: seconds for pathological labels, so never on the event loop.
    layouts, sheet = await anyio.to_thread.run_sync(plan_layouts, axes, cells, checked.grid_scale)
    check_pixels(layouts, sheet, checked.grid_scale, ctx.settings.max_grid_pixels)
    return SweepPlan(
        tool=tool,
        prepare=prepare,
        sweep_id=f"sweep-{secrets.token_hex(6)}",
        base=base,
        base_args=base.model_dump(mode="json"),
        seed=checked.seed,
        axes=axes,
        cells=cells,
        run_order=run_order,
        order_params=checked.order_params,
        grid_scale=checked.grid_scale,
        layouts=layouts,
        sheet=sheet,
        total_units=offset,
        warnings=_repeats(axes),
    )
