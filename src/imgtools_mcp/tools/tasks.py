"""`get_job` and `cancel_job`: progress, result and cancellation of background tasks (called jobs in the tools)."""

from __future__ import annotations

from typing import Any

import anyio
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp_types import CallToolResult, TextContent, ToolAnnotations
from pydantic import BaseModel, ConfigDict, Field

from ..tasks import FINAL_STATES, TaskRecord
from .present import app_of, bind_tool


class GetJobRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    job_id: str = Field(min_length=1, max_length=64, description="From a background call")
    wait_s: float = Field(0.0, ge=0.0, le=60.0, description="Seconds to wait for the job to finish")


class CancelJobRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    job_id: str = Field(min_length=1, max_length=64, description="From a background call")


class JobStatus(BaseModel):
    job_id: str
    tool: str
    state: str = Field(description="queued | running | done | error | cancelled | interrupted")
    progress: float
    total: float | None = None
    message: str | None = None
    error: str | None = None
    result: dict[str, Any] | None = Field(None, description="The tool's structured result once done")


def _status(record: TaskRecord) -> CallToolResult:
    structured = JobStatus(
        job_id=record.id,
        tool=record.tool,
        state=record.state,
        progress=record.progress,
        total=record.total,
        message=record.message,
        error=record.error,
        result=(record.result or {}).get("structuredContent"),
    )
    line = f"job {record.id} ({record.tool}): {record.state}"
    if record.total:
        line += f", {record.progress:g}/{record.total:g}"
    if record.message:
        line += f" — {record.message}"
    if record.error:
        line += f" — {record.error}"
    content: list[Any] = [TextContent(type="text", text=line)]
    if record.result:
        result = CallToolResult.model_validate(record.result)
        content.extend(result.content)
    return CallToolResult(content=content, structured_content=structured.model_dump(mode="json"))


def _record(ctx: Context, job_id: str) -> TaskRecord:
    record = app_of(ctx).tasks.get(job_id)
    if record is None:
        raise ToolError(f"job_id: unknown job {job_id!r}")
    return record


async def get_job(request: GetJobRequest, ctx: Context) -> CallToolResult:
    record = _record(ctx, request.job_id)
    if request.wait_s and record.state not in FINAL_STATES:
        with anyio.move_on_after(request.wait_s):
            await app_of(ctx).tasks.wait(request.job_id)
    return _status(record)


async def cancel_job(request: CancelJobRequest, ctx: Context) -> CallToolResult:
    _record(ctx, request.job_id)
    tasks = app_of(ctx).tasks
    tasks.cancel(request.job_id)
    with anyio.move_on_after(30):
        # The job stops at its next denoising step; wait for that so the answer is the final state.
        await tasks.wait(request.job_id)
    return _status(_record(ctx, request.job_id))


def register(server: MCPServer) -> None:
    read_only = ToolAnnotations(title="Get job", read_only_hint=True, idempotent_hint=True, open_world_hint=False)
    bind_tool(
        server, GetJobRequest, get_job, name="get_job", title="Get job", output_model=JobStatus,
        description="State, progress and, once done, the result of a background job; wait_s long-polls up to 60 s.",
        annotations=read_only,
    )
    bind_tool(
        server, CancelJobRequest, cancel_job, name="cancel_job", title="Cancel job", output_model=JobStatus,
        description="Stop a background job at its next step; finished work is kept.",
        annotations=ToolAnnotations(title="Cancel job", read_only_hint=False, destructive_hint=False, idempotent_hint=True, open_world_hint=False),
    )
