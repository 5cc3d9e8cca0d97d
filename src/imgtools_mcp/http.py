"""Streamable HTTP serving at /mcp."""

from __future__ import annotations

import anyio

from .config import Settings
from .server import ImgToolsServer


def run_http(server: ImgToolsServer, settings: Settings, host: str, port: int) -> None:
    anyio.run(lambda: server.run_streamable_http_async(host=host, port=port, streamable_http_path="/mcp"))
