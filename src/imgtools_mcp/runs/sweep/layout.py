"""Sweep grids: one layout per Z value sharing column widths and row heights, the sheet of all, and their pixels."""

from __future__ import annotations

import math
from collections import Counter
from typing import TYPE_CHECKING, Any

from PIL import Image

from ... import __version__
from ...images.grid import GridLayout, SheetLayout, placeholder_tile, plan_grid, plan_sheet, render_grid, render_sheet
from ...infotext import format_infotext
from ..context import RunInputError
from .axes import Axis, display

if TYPE_CHECKING:
    from .plan import Cell, SweepPlan

PREVIEW_EDGE = 768  # the inline thumbnail's long edge
Rendered = tuple[Image.Image, int | None, str, GridLayout | None]
"""(image, z index or None for the whole sweep, title, layout or None for the sheet)"""


def plan_layouts(axes: list[Axis], cells: list["Cell"], scale: float) -> tuple[list[GridLayout], SheetLayout | None]:
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


def check_pixels(layouts: list[GridLayout], sheet: SheetLayout | None, scale: float, limit: int) -> None:
    width, height = sheet.size if sheet is not None else layouts[0].size
    pixels = width * height
    if pixels > limit:
        # Tiles shrink with grid_scale, margins do not; 0.95 leaves room for them.
        suggestion = math.floor(scale * math.sqrt(limit / pixels) * 0.95 * 100) / 100
        hint = f"set grid_scale to {suggestion:g} or less, or use" if suggestion >= 0.01 else "use"
        raise RunInputError(
            f"grid: {width}x{height} = {pixels} pixels exceeds IMGTOOLS_MAX_GRID_PIXELS={limit}; {hint} fewer or smaller cells"
        )


def _tile_of(cell: "Cell", layout: GridLayout, scale: float) -> Image.Image:
    if cell.tile is not None:
        return cell.tile
    box = layout.tile_box(cell.coord("y"), cell.coord("x"))
    size = cell.tile_size(scale) or (box[2], box[3])
    text = cell.error if cell.status == "error" else "cancelled"
    return placeholder_tile(size, text or "not made")


def render_grids(plan: "SweepPlan", layouts: list[GridLayout], sheet_layout: SheetLayout | None, scale: float) -> list[Rendered]:
    """Every grid, the whole sweep first."""
    z_axis = plan.axis("z")
    grids: list[Rendered] = []
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


def render_previews(plan: "SweepPlan") -> list[Image.Image] | None:
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


def grid_infotext(plan: "SweepPlan", done: int) -> str:
    """A1111's X/Y/Z plot infotext: the fixed base parameters, then each axis's type and values."""
    base = plan.base
    fields: dict[str, Any] = {
        "Steps": base.steps,
        "Sampler": base.sampler if base.sampler != "default" else None,
        "CFG scale": base.guidance_scale,
        "Seed": plan.seed,
        "Size": f"{base.width}x{base.height}" if base.width and base.height else None,
        "Model": display("model", base.model) if base.model else None,
    }
    for axis in plan.axes:  # a swept parameter has no single value to report
        fields.pop(_INFOTEXT_KEYS.get(axis.param, ""), None)
    fields["Script"] = "X/Y/Z plot"
    for axis in plan.axes:
        fields[f"{axis.name.upper()} Type"] = axis.param
        fields[f"{axis.name.upper()} Values"] = ", ".join(display(axis.param, value) for value in axis.values)
    fields.update({"Sweep": plan.sweep_id, "Cells": f"{done}/{len(plan.cells)}", "Version": f"imgtools-mcp {__version__}"})
    return format_infotext(base.prompt, base.negative_prompt, fields)
