"""The `edit` tool: image + prompt to image (img2img), on the weights already loaded for generate."""

from __future__ import annotations

from mcp.server.mcpserver import MCPServer

from ..params import EditRequest
from .present import bind_image_tool

DESCRIPTION = """Img2img: restyle, recolour or vary a whole image under a prompt, keeping its composition. `image`
can be an output's imgtools://images/<id>. strength 0.2-0.4 touch-up, 0.5-0.7 restyle, 0.8+ mostly new (about
strength*steps steps run). Size: the input's, rounded to 8. For one region use inpaint; to extend the canvas, its expand."""


def register(server: MCPServer) -> None:
    bind_image_tool(server, EditRequest, name="edit", title="Edit image", description=DESCRIPTION)
