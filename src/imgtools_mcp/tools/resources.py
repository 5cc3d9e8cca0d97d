"""Resources: every output image and its metadata, readable as imgtools://images/<id>[/metadata]; recent ones listed."""

from __future__ import annotations

import json
from pathlib import Path

from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ResourceNotFoundError
from mcp_types import Resource

from ..store import ID_PATTERN, URI_PREFIX, OutputStore

# resources/list shows this many outputs, newest first; older ones stay readable by id.
RECENT_OUTPUTS = 50

from .present import app_of


def register(server: MCPServer) -> None:
    @server.resource("imgtools://images/{image_id}", name="image", title="Output image", mime_type="image/png")
    def image(image_id: str, ctx: Context) -> bytes:
        """The full PNG of an output, with its infotext chunk."""
        try:
            return app_of(ctx).store.read_png(image_id)
        except KeyError:
            raise ResourceNotFoundError(f"unknown image id {image_id!r}") from None

    @server.resource(
        "imgtools://images/{image_id}/metadata", name="image_metadata", title="Output metadata", mime_type="application/json"
    )
    def metadata(image_id: str, ctx: Context) -> str:
        """The JSON sidecar of an output: parameters used, model, engine, timings, parent."""
        try:
            return json.dumps(app_of(ctx).store.read_metadata(image_id), indent=2)
        except KeyError:
            raise ResourceNotFoundError(f"unknown image id {image_id!r}") from None


def recent_outputs(store: OutputStore, limit: int = RECENT_OUTPUTS) -> list[Resource]:
    """The newest outputs as listable resources, newest first (ids start with their UTC second; within a second,
    the file's modification time decides)."""

    def age(path: Path) -> tuple[str, int]:
        try:
            return path.stem[:15], path.stat().st_mtime_ns
        except OSError:  # deleted while listing
            return path.stem[:15], 0

    pngs = sorted((path for path in store.root.glob("*.png") if ID_PATTERN.match(path.stem)), key=age, reverse=True)
    ids = [path.stem for path in pngs]
    return [
        Resource(
            uri=URI_PREFIX + image_id,
            name=image_id,
            title=f"Output {image_id}",
            description=f"Image made {image_id[:4]}-{image_id[4:6]}-{image_id[6:8]} "
            f"{image_id[9:11]}:{image_id[11:13]}:{image_id[13:15]} UTC; its metadata is at {URI_PREFIX}{image_id}/metadata",
            mime_type="image/png",
        )
        for image_id in ids[:limit]
    ]
