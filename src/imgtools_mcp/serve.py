"""Run the server over stdio or Streamable HTTP."""

from __future__ import annotations

import ipaddress
import socket
import sys

from .config import Settings


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def base_url(host: str, port: int) -> str:
    """The URL clients use; a wildcard bind is reached by the machine's name."""
    if host in ("", "0.0.0.0", "::"):
        host = socket.gethostname()
    elif ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}"


def serve(settings: Settings, transport: str, host: str, port: int) -> int:
    # Checked before anything heavy is imported, so a refused start is immediate.
    if transport == "http" and not is_loopback(host) and settings.auth_token is None:
        print(
            f"imgtools-mcp: refusing to serve on {host} without a token; set IMGTOOLS_AUTH_TOKEN (or --auth-token)",
            file=sys.stderr,
        )
        return 2
    from .server import build_server

    server = build_server(settings, base_url=base_url(host, port))
    if transport == "stdio":
        server.run("stdio")
        return 0
    from .http import run_http

    run_http(server, settings, host, port)
    return 0
