"""The `generate` tool: text to image."""

from __future__ import annotations

from mcp.server.mcpserver import Context, MCPServer
from mcp_types import CallToolResult, ToolAnnotations

from ..app import AppContext
from ..params import GenerateRequest
from .common import bind_tool
from .generation import ImageInputs, run_image_tool

DESCRIPTION = """Make image(s) from a text prompt with the local diffusion engine.
Returns a thumbnail and an imgtools://images/<id> link per image; pass the id to edit/inpaint to keep working on it.
Omitted width/height/steps/guidance come from the model family; the seed is always reported, reuse it to reproduce.
Cost: steps x the device's time per step (a fraction of a second on a GPU, seconds on a CPU; engine_status shows
the device). Use sweep to compare parameter values, refine to iterate toward a goal with critique."""


async def prepare_inputs(app: AppContext, request: GenerateRequest) -> ImageInputs:
    """What generate adds to the shared parameters: nothing but the mode (sweep calls this once per cell)."""
    return ImageInputs(mode="txt2img")


async def handle(request: GenerateRequest, ctx: Context) -> CallToolResult:
    return await run_image_tool(ctx, "generate", request, lambda app: prepare_inputs(app, request))


def register(server: MCPServer) -> None:
    bind_tool(
        server,
        GenerateRequest,
        handle,
        name="generate",
        title="Generate image",
        description=DESCRIPTION,
        annotations=ToolAnnotations(
            title="Generate image", read_only_hint=False, destructive_hint=False, idempotent_hint=False, open_world_hint=False
        ),
    )
