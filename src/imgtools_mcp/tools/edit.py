"""The `edit` tool: image + prompt to image (img2img), on the weights already loaded for generate."""

from __future__ import annotations

from mcp.server.mcpserver import MCPServer

from ..params import EditRequest
from .present import bind_image_tool

DESCRIPTION = """Change a whole image under a prompt (img2img): restyle, recolour, vary or clean it up while keeping its composition.
Chain results by passing an output's imgtools://images/<id> as `image`.
`strength` is how far to move from the input: 0.2-0.4 light touch-up, 0.5-0.7 restyle (default 0.6), 0.8-1 mostly new; about strength*steps denoising steps run, so it costs less than generate.
The output keeps the input's size (rounded to multiples of 8) unless width/height are given.
To change one region and keep every other pixel, use inpaint with mask_shapes; to extend the canvas, inpaint with expand."""


def register(server: MCPServer) -> None:
    bind_image_tool(server, EditRequest, name="edit", title="Edit image", description=DESCRIPTION)
