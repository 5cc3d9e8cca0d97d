"""Resources: every output image and its metadata, readable as imgtools://images/<id>[/metadata]."""

from __future__ import annotations

import json

from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ResourceError

from .present import app_of


def register(server: MCPServer) -> None:
    @server.resource("imgtools://images/{image_id}", name="image", title="Output image", mime_type="image/png")
    def image(image_id: str, ctx: Context) -> bytes:
        """The full PNG of an output, with its infotext chunk."""
        try:
            return app_of(ctx).store.read_png(image_id)
        except KeyError:
            raise ResourceError(f"unknown image id {image_id!r}") from None

    @server.resource(
        "imgtools://images/{image_id}/metadata", name="image_metadata", title="Output metadata", mime_type="application/json"
    )
    def metadata(image_id: str, ctx: Context) -> str:
        """The JSON sidecar of an output: parameters used, model, engine, timings, parent."""
        try:
            return json.dumps(app_of(ctx).store.read_metadata(image_id), indent=2)
        except KeyError:
            raise ResourceError(f"unknown image id {image_id!r}") from None
