"""The `generate` tool: text to image."""

from __future__ import annotations

from mcp.server.mcpserver import Context, MCPServer
from mcp_types import CallToolResult, ToolAnnotations

from ..params import GenerateRequest
from .present import bind_tool, run_image_tool

DESCRIPTION = """Make image(s) from a text prompt with the local diffusion engine.
Returns a thumbnail and an imgtools://images/<id> link per image; pass the id to edit/inpaint to keep working on it.
Omitted width/height/steps/guidance come from the model family; the seed is always reported, reuse it to reproduce.
Cost: steps x the device's time per step (a fraction of a second on a GPU, seconds on a CPU; engine_status shows
the device). Use sweep to compare parameter values, refine to iterate toward a goal with critique."""


async def handle(request: GenerateRequest, ctx: Context) -> CallToolResult:
    return await run_image_tool(ctx, request)


def register(server: MCPServer) -> None:
    bind_tool(
        server,
        GenerateRequest,
        handle,
        name="generate",
        title="Generate image",
        description=DESCRIPTION,
        annotations=ToolAnnotations(
            title="Generate image", read_only_hint=False, destructive_hint=False, idempotent_hint=False,
            open_world_hint=True,  # control and reference images may be http(s) URLs
        ),
    )
