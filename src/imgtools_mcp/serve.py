"""Run the server over stdio or Streamable HTTP."""

from __future__ import annotations

import ipaddress
import sys

from .config import Settings
from .server import build_server


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def serve(settings: Settings, transport: str, host: str, port: int) -> int:
    server = build_server(settings)
    if transport == "stdio":
        server.run("stdio")
        return 0
    if not is_loopback(host) and settings.auth_token is None:
        print(
            f"imgtools-mcp: refusing to serve on {host} without a token; set IMGTOOLS_AUTH_TOKEN (or --auth-token)",
            file=sys.stderr,
        )
        return 2
    from .http import run_http

    run_http(server, settings, host, port)
    return 0
