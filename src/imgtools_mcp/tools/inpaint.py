"""The `inpaint` tool: repaint a masked part of an image (mask image, shapes, or an expanded border) and keep the rest."""

from __future__ import annotations

from mcp.server.mcpserver import MCPServer

from ..params import InpaintRequest
from .present import bind_image_tool

DESCRIPTION = """Repaint part of an image, keeping every other pixel exactly, or outpaint (grow the canvas, paint the new border).
Say where with exactly one of:
- `mask_shapes` (easiest): rects/ellipses, fractions of the image when x, y, width, height are all <= 1, else
  pixels; e.g. [{"type": "ellipse", "x": 0.3, "y": 0.1, "width": 0.4, "height": 0.4}] for the upper middle.
- `mask`: a mask image reference (white = repaint, black = keep).
- `expand`: {left, right, top, bottom} pixels to add; the output is that much larger.
The prompt says what should appear there (for expand: the whole scene).
Chain results by passing an output's imgtools://images/<id> as `image`.
`inpaint_area: "masked"` works on a crop around the mask: more detail for small areas.
Output keeps the image's size (plus expand); costs like generate. For the whole image use edit."""


def register(server: MCPServer) -> None:
    bind_image_tool(server, InpaintRequest, name="inpaint", title="Inpaint / outpaint image", description=DESCRIPTION)
