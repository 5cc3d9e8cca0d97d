"""The `generate` tool: text to image."""

from __future__ import annotations

from mcp.server.mcpserver import MCPServer

from ..params import GenerateRequest
from .present import bind_image_tool

DESCRIPTION = """Make image(s) from a text prompt with the local diffusion engine.
Returns a thumbnail and an imgtools://images/<id> link per image; pass the id to edit/inpaint to keep working on it.
Omitted width/height/steps/guidance come from the model family; the seed is always reported, reuse it to reproduce.
Cost: steps x the device's time per step (a fraction of a second on a GPU, seconds on a CPU; engine_status shows
the device). Use sweep to compare parameter values, refine to iterate toward a goal with critique."""


def register(server: MCPServer) -> None:
    bind_image_tool(server, GenerateRequest, name="generate", title="Generate image", description=DESCRIPTION)
