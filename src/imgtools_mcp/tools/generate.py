"""The `generate` tool: text to image."""

from __future__ import annotations

from mcp.server.mcpserver import MCPServer

from ..params import GenerateRequest
from .present import bind_image_tool

DESCRIPTION = """Make image(s) from a text prompt on the local diffusion engine. Each returns a thumbnail and an
imgtools://images/<id> link to pass to edit/inpaint; the seed is reported. Compare values with sweep; iterate
toward a goal with refine."""


def register(server: MCPServer) -> None:
    bind_image_tool(server, GenerateRequest, name="generate", title="Generate image", description=DESCRIPTION)
