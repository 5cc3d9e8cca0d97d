"""The `inpaint` tool: repaint a masked part of an image (mask image, shapes, or an expanded border) and keep the rest."""

from __future__ import annotations

from mcp.server.mcpserver import MCPServer

from ..params import InpaintRequest
from .present import bind_image_tool

DESCRIPTION = """Repaint part of an image, keeping every other pixel, or outpaint. Say where with exactly one of:
`mask_shapes` (rects/ellipses, e.g. [{"type":"ellipse","x":0.3,"y":0.1,"width":0.4,"height":0.4}]), `mask` (white
repaint, black keep), `mask_prompt` (the VLM finds it) or `expand` (grow the canvas). The prompt says what goes there
(for expand: the whole scene). `image` can be an output's imgtools://images/<id>. For the whole image use edit."""


def register(server: MCPServer) -> None:
    bind_image_tool(server, InpaintRequest, name="inpaint", title="Inpaint / outpaint image", description=DESCRIPTION)
