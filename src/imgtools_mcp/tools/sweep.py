"""The `sweep` tool: one base request × up to three axes of values → every cell as a real output, plus labelled grids."""

from __future__ import annotations

from collections import Counter
from dataclasses import replace
from typing import Any

from mcp.server.mcpserver import Context, MCPServer
from mcp_types import CallToolResult, ToolAnnotations

from ..runs.context import ResolveOnce, RunContext
from ..runs.progress import ProgressRelay, rising
from ..runs.sweep.axes import display
from ..runs.sweep.models import SweepRequest, SweepResult
from ..runs.sweep.plan import MAX_TEXT_ERRORS, SweepPlan, check_sweep, plan_sweep
from ..runs.sweep.run import SweepOutcome, axes_info, run_sweep
from .present import app_of, bind_tool, image_blocks, resource_link, result_of, run_here_or_as_task, started_result

MAX_Z_THUMBNAILS = 4

DESCRIPTION = """Run one generate/edit/inpaint request for every combination of up to three axes: each cell is an
output, plus labelled grids (X columns, Y rows, one per Z value). Axis: {param, values} or {param, start, stop, count}
(stop included). param: a scalar parameter of the base (seed, steps, sampler, model, ...), size ('WxH'), prompt_sr
(first value replaced in the prompt by each) or lora:<name> (weight).
One seed for all cells unless swept; invalid values become labelled tiles. Costs a generation per cell."""


def summary(plan: SweepPlan, result: SweepResult) -> str:
    counts = Counter(cell.status for cell in result.cells)
    shape = " × ".join(f"{axis.param} ({len(axis.values)})" for axis in plan.axes)
    text = (
        f"sweep of {plan.tool} over {shape}: {counts['done']}/{len(result.cells)} cells made"
        + (f", {counts['error']} failed" if counts["error"] else "")
        + (f", {counts['cancelled']} cancelled" if counts["cancelled"] else "")
    )
    if result.grids:
        grid = result.grids[0]
        text += f"; grid {grid.id} {grid.width}x{grid.height}"
    text += f"; seed {plan.seed}; {result.timings['total_s']:.1f} s"
    if result.error:
        text += f" — not written: {result.error}"
    errors = [
        f"({', '.join(f'{k}={v}' for k, v in (('x', c.x), ('y', c.y), ('z', c.z)) if plan.axis(k))}) {c.error}"
        for c in result.cells
        if c.status == "error"
    ]
    if errors:
        more = f" (+{len(errors) - MAX_TEXT_ERRORS} more)" if len(errors) > MAX_TEXT_ERRORS else ""
        text += " — errors: " + "; ".join(errors[:MAX_TEXT_ERRORS]) + more
    if result.warnings:
        text += " — " + "; ".join(result.warnings)
    return text


async def present(outcome: SweepOutcome) -> CallToolResult:
    """Thumbnails (from the previews) for the grids only, to keep within the inline budget; links to every grid and cell."""
    plan, saved = outcome.plan, outcome.grids
    shown = saved if len(saved) <= 1 + MAX_Z_THUMBNAILS else saved[:1]
    blocks: list[Any] = await image_blocks([grid.stored for grid in shown], [grid.preview for grid in shown])
    blocks += [resource_link(grid.stored, f"grid {grid.title}") for grid in saved[len(shown) :]]
    for cell in plan.cells:
        if cell.stored is not None:
            labels = ", ".join(f"{param}: {display(param, value)}" for param, value in cell.values.items())
            blocks.append(resource_link(cell.stored, labels))
    result = result_of(summary(plan, outcome.result), blocks, outcome.result)
    if outcome.result.state == "error":  # what was made is listed, yet the caller must know the sweep is incomplete
        result.is_error = True
    return result


async def handle(request: SweepRequest, ctx: Context) -> CallToolResult:
    resolver = ResolveOnce(app_of(ctx).resolver)  # every cell shares one fetch and decode of each input image
    # Without the model: a background sweep's id comes back before any model is resolved or downloaded.
    checked = await check_sweep(app_of(ctx).run_context(resolver=resolver), request)

    async def run(run_ctx: RunContext) -> SweepOutcome:
        run_ctx = replace(run_ctx, sink=rising(run_ctx.sink))  # planning, then the cells: one rising bar
        planning = ProgressRelay(run_ctx.sink)
        async with planning.running():
            plan = await plan_sweep(run_ctx, checked, planning.on_progress)
        return await run_sweep(run_ctx, plan)

    def started(task_id: str) -> CallToolResult:
        ticket = SweepResult(tool=checked.tool, state="started", axes=axes_info(checked), base=checked.reported_base,
                             seed=checked.seed, run_order=checked.order_params, job_id=task_id)
        return started_result("sweep", task_id, ticket, f" ({checked.cell_count} cells)")

    return await run_here_or_as_task(
        ctx, "sweep", request.background, run, present, started, stoppable=True, resolver=resolver
    )


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
            title="Parameter sweep", read_only_hint=False, destructive_hint=False, idempotent_hint=False, open_world_hint=True
        ),
    )
