"""Running a sweep: every cell in plan order on one progress bar, then the grids saved; what was made is kept."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Literal

import anyio
import anyio.to_thread
from PIL import Image

from ...engine.errors import GenerationCancelled
from ...images.grid import GridLayout
from ...store import StoredImage, StoreError
from ..context import RunContext
from ..image_run import run_and_save
from ..progress import ProgressRelay
from .layout import grid_infotext, render_grids, render_previews
from .models import SweepAxisInfo, SweepGrid, SweepResult
from .plan import Cell, CheckedSweep, SweepPlan, error_text, plan_cell

log = logging.getLogger(__name__)
State = Literal["done", "cancelled", "error"]


@dataclass
class SavedGrid:
    stored: StoredImage
    preview: Image.Image  # the thumbnail's source: the grid laid out again at preview size
    z: int | None
    title: str
    layout: GridLayout | None

    def info(self) -> SweepGrid:
        layout = self.layout
        return SweepGrid(
            **SweepGrid.fields_of(self.stored),
            z=self.z,
            title=self.title,
            columns=[[left, width] for left, width in zip(layout.column_lefts, layout.column_widths)] if layout else [],
            rows=[[top, height] for top, height in zip(layout.row_tops, layout.row_heights)] if layout else [],
        )


@dataclass
class SweepOutcome:
    plan: SweepPlan
    result: SweepResult
    grids: list[SavedGrid]


def axes_info(plan: SweepPlan | CheckedSweep) -> list[SweepAxisInfo]:
    return [SweepAxisInfo(axis=a.name, param=a.param, values=a.values, labels=a.labels) for a in plan.axes]


async def _run_cell(ctx: RunContext, plan: SweepPlan, cell: Cell, relay: ProgressRelay) -> None:
    assert cell.request is not None
    inputs, planned = await plan_cell(ctx, plan.prepare, cell.request, relay.on_progress)
    inputs.metadata = {**inputs.metadata, "sweep": {"id": plan.sweep_id, **cell.coords, "values": cell.values}}
    made = await run_and_save(ctx, plan.tool, planned, inputs, relay)
    cell.status = "done"
    cell.image, cell.parameters, cell.stored = made.result.images[0], made.result.parameters, made.stored[0]
    image = made.images[0]
    if plan.grid_scale != 1.0:
        size = (max(1, round(image.width * plan.grid_scale)), max(1, round(image.height * plan.grid_scale)))
        image = image.resize(size, Image.Resampling.LANCZOS)
    cell.tile = image


async def _run_cells(ctx: RunContext, plan: SweepPlan, relay: ProgressRelay) -> str | None:
    """Run the pending cells; returns what could not be written, if the output folder failed (the rest is not run)."""
    total = len(plan.run_order)
    stop = ctx.stop
    failure: str | None = None
    with anyio.CancelScope() as scope:
        stop.attach(scope)
        for number, cell in enumerate(plan.run_order, start=1):
            if stop.requested:
                break
            if cell.status != "pending":
                continue
            relay.segment(cell.offset, cell.units, f"cell {number} / {total}, ")
            started = time.perf_counter()
            try:
                await _run_cell(ctx, plan, cell, relay)
            except GenerationCancelled:
                break
            except StoreError as exc:  # the next cells would fail the same way; keep what is on disk
                cell.status, cell.error = "error", str(exc)
                failure = f"cell {number}: {exc}"
                break
            except Exception as exc:  # an engine failure spoils this cell only; the error is kept in its tile
                cell.status, cell.error = "error", error_text(exc)
                log.warning("sweep %s cell %s failed: %s", plan.sweep_id, cell.coords, cell.error)
            finally:
                cell.seconds = round(time.perf_counter() - started, 4)
    stop.attach(None)
    if scope.cancelled_caught:
        log.info("sweep %s stopped on request", plan.sweep_id)
    return failure


async def run_sweep(ctx: RunContext, plan: SweepPlan) -> SweepOutcome:
    """Run every cell in plan order, then save the grids; a cancelled or failed sweep still saves what it made."""
    started = time.perf_counter()
    relay = ProgressRelay(ctx.sink, grand_total=plan.total_units)
    failure: str | None = None
    try:
        async with relay.running():
            failure = await _run_cells(ctx, plan, relay)
            if failure is None and not ctx.stop.requested and plan.total_units > relay.reported:
                relay.post(plan.total_units, f"cell {len(plan.cells)} / {len(plan.cells)}, done")
    except anyio.get_cancelled_exc_class():
        # The caller is gone (or the server is stopping); the finished cells are on disk, and the grid and
        # its sidecar list them.
        with anyio.CancelScope(shield=True):
            await finish(ctx, plan, "cancelled", started)
        raise
    state: State = "error" if failure else "cancelled" if ctx.stop.requested else "done"
    return await finish(ctx, plan, state, started, failure)


async def finish(ctx: RunContext, plan: SweepPlan, state: State, started: float, failure: str | None = None) -> SweepOutcome:
    for cell in plan.cells:
        if cell.status == "pending":
            cell.status = "cancelled"
            if failure:
                cell.error = "not run: the output folder could not be written"
    cells = [cell.info() for cell in plan.cells]
    done = sum(cell.status == "done" for cell in plan.cells)
    axes = axes_info(plan)
    grid_started = time.perf_counter()
    problems = [failure] if failure else []

    def render_and_save() -> list[SavedGrid]:
        saved: list[SavedGrid] = []
        infotext = grid_infotext(plan, done)
        grids = render_grids(plan, plan.layouts, plan.sheet, plan.grid_scale)
        previews = render_previews(plan) or [image for image, *_ in grids]
        for preview, (image, z, title, layout) in zip(previews, grids, strict=True):
            shown = [info for info in cells if z is None or info.z == z]
            metadata = {
                "tool": "sweep",
                "sweep": {"id": plan.sweep_id, "tool": plan.tool, "state": state, "z": z, "title": title,
                          "base": plan.reported_base, "axes": [axis.model_dump(mode="json") for axis in axes],
                          "grid_scale": plan.grid_scale},
                "cells": [info.model_dump(mode="json") for info in shown],
            }
            try:
                stored = ctx.store.save(image, infotext, metadata)
            except StoreError as exc:  # the cells are saved already; say which grid is missing
                problems.append(f"grid {title or 'of the sweep'}: {exc}")
                break
            saved.append(SavedGrid(stored, preview, z, title, layout))
        return saved

    # Rendering draws every tile and label: seconds for a big sweep, so never on the event loop.
    saved = await anyio.to_thread.run_sync(render_and_save)
    timings = {
        "cells_s": round(sum(cell.seconds or 0.0 for cell in plan.cells), 4),
        "grid_s": round(time.perf_counter() - grid_started, 4),
        "total_s": round(time.perf_counter() - started, 4),
    }
    result = SweepResult(
        tool=plan.tool,
        state="error" if problems else state,
        axes=axes,
        cells=cells,
        grids=[grid.info() for grid in saved],
        base=plan.reported_base,
        seed=plan.seed,
        run_order=plan.order_params,
        timings=timings,
        warnings=plan.warnings,
        error="; ".join(problems) or None,
    )
    return SweepOutcome(plan, result, saved)
