"""The `refine` tool: generate candidates, critique each, revise the prompt with the history in view, repeat."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from mcp.server.mcpserver import Context, MCPServer
from mcp_types import CallToolResult, ToolAnnotations

from ..runs.context import RunContext
from ..runs.progress import ProgressRelay, rising
from ..runs.refine.loop import RefineOutcome, run_refine
from ..runs.refine.models import RefineRequest, RefineResult
from ..runs.refine.state import plan_refine, start_params
from ..runs.vlm_messages import usage_text
from .present import app_of, bind_tool, image_blocks, result_of, run_here_or_as_task, started_result
from .vision_common import require_vlm

DESCRIPTION = """Art-direct an image toward a goal: each round makes num_images candidates, the VLM scores each (0-10)
and the best is kept, then the VLM revises prompt and parameters against the main remaining problem, seeing earlier
rounds. Stops at target_score, max_rounds, max_cost or cancel. Seed, model, size and LoRAs stay; steps at most
double. Returns the best image, each round and the VLM cost. Per round: num_images generations and critiques, one
revision."""


async def present(outcome: RefineOutcome) -> CallToolResult:
    result, best = outcome.result, outcome.best
    scores = " -> ".join(f"{r.best_score:g}" if r.best_score is not None else "-" for r in result.rounds)
    blocks: list[Any] = []
    if best is None:
        text = f"refine: {result.state} ({result.stop_reason}) after {len(result.rounds)} round(s) with no scored image"
    else:
        text = (
            f"refine: best {best.stored.id} scored {best.score:g}/10 (round {best.round}); best score by round {scores}; "
            f"stopped: {result.stop_reason}; {usage_text(result.usage)}. Critic: {best.critique.summary}"
        )
        blocks = await image_blocks([best.stored], [best.image])
    if result.warnings:
        text += " — " + "; ".join(result.warnings)
    return result_of(text, blocks, result)


async def handle(request: RefineRequest, ctx: Context) -> CallToolResult:
    app = app_of(ctx)
    vlm = require_vlm(app)  # the key first: no image is made for a loop that cannot critique it
    start_params(request)  # what needs no model fails the call; a background job's id comes back before the model resolves

    async def run(run_ctx: RunContext) -> RefineOutcome:
        run_ctx = replace(run_ctx, sink=rising(run_ctx.sink))  # planning, then the rounds: one rising bar
        planning = ProgressRelay(run_ctx.sink)
        async with planning.running():
            plan = await plan_refine(run_ctx, request, vlm, planning.on_progress)
        return await run_refine(run_ctx, plan)

    def started(task_id: str) -> CallToolResult:
        ticket = RefineResult(state="started", goal=request.goal, job_id=task_id)
        return started_result("refine", task_id, ticket, f" (up to {request.max_rounds} rounds)")

    return await run_here_or_as_task(ctx, "refine", request.background, run, present, started, stoppable=True)


def register(server: MCPServer) -> None:
    bind_tool(
        server,
        RefineRequest,
        handle,
        name="refine",
        title="Refine toward a goal",
        description=DESCRIPTION,
        output_model=RefineResult,
        annotations=ToolAnnotations(
            title="Refine toward a goal", read_only_hint=False, destructive_hint=False, idempotent_hint=False,
            open_world_hint=True,
        ),
    )
