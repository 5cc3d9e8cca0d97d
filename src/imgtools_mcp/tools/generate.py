"""The `generate` tool: text to image."""

from __future__ import annotations

from mcp.server.mcpserver import MCPServer

from ..params import GenerateRequest
from .present import bind_image_tool

DESCRIPTION = """Make image(s) from a text prompt with the local diffusion engine.
Each image comes back as a thumbnail and an imgtools://images/<id> link; pass the id to edit/inpaint to keep working.
Omitted size, steps and guidance follow the model family; the seed is reported (reuse it to reproduce).
Cost: steps x time per step (engine_status shows the device). Compare values with sweep; iterate toward a goal with refine."""


def register(server: MCPServer) -> None:
    bind_image_tool(server, GenerateRequest, name="generate", title="Generate image", description=DESCRIPTION)
