"""Streamable HTTP serving at /mcp: Host/Origin checks, request size limit, and an unauthenticated /health."""

from __future__ import annotations

import copy
import ipaddress
import logging
import socket
from typing import Any

import anyio
import uvicorn
from mcp.server.transport_security import TransportSecuritySettings
from starlette.requests import Request
from starlette.responses import JSONResponse

from . import __version__
from .config import Settings
from .http_events import RETRY_INTERVAL_MS, BoundedEventStore, SessionScope
from .server import ImgToolsServer

log = logging.getLogger(__name__)

LOOPBACK_NAMES = ("127.0.0.1", "localhost", "[::1]")
WILDCARD_ADDRESSES = ("", "0.0.0.0", "::")


def _host_literal(host: str) -> str:
    """How a host appears in a Host header: IPv6 addresses in brackets."""
    try:
        return f"[{host}]" if ipaddress.ip_address(host).version == 6 else host
    except ValueError:
        return host


def _machine_names() -> set[str]:
    """Names and addresses clients may use to reach a server bound to every interface."""
    names = {socket.gethostname()}
    try:
        import psutil

        for addresses in psutil.net_if_addrs().values():
            for address in addresses:
                if address.family in (socket.AF_INET, socket.AF_INET6):
                    names.add(address.address.split("%")[0])  # drop an IPv6 zone id
    except (ImportError, OSError) as exc:
        log.warning("could not list network interfaces (%s); set IMGTOOLS_ALLOWED_HOSTS to the names clients use", exc)
    return names


def transport_security(settings: Settings, host: str, port: int) -> TransportSecuritySettings:
    """Host and Origin values the server answers to: its own address(es) on its port, plus configured extras.

    The MCP transport rules ask a server to check Origin (a web page must not drive a local server
    through DNS rebinding); the SDK answers a bad Host with 421 and a bad Origin with 403.
    """
    names = set(LOOPBACK_NAMES)
    if host in WILDCARD_ADDRESSES:
        names |= _machine_names()
    else:
        names.add(host)
    hosts = {f"{_host_literal(name.strip('[]'))}:{port}" for name in names}
    for extra in settings.allowed_hosts:
        # "name" alone allows any port; "name:port" exactly that one.
        hosts |= {extra} if ":" in extra.removeprefix("[").split("]")[-1] else {extra, f"{extra}:*"}
    origins = {f"{scheme}://{value}" for value in hosts for scheme in ("http", "https")}
    origins |= set(settings.allowed_origins)
    return TransportSecuritySettings(
        enable_dns_rebinding_protection=True, allowed_hosts=sorted(hosts), allowed_origins=sorted(origins)
    )


def add_health_route(server: ImgToolsServer, settings: Settings) -> None:
    """GET /health, open without a token: liveness and queue depth only (no paths, models or keys)."""

    async def health(_: Request) -> JSONResponse:
        app = server.app_context
        body: dict[str, object] = {"status": "ok" if app is not None else "starting", "version": __version__}
        if app is not None:
            body["queue"] = {
                "waiting": app.engine.queue_length,
                "running": app.engine.busy,
                "max_queue": settings.max_queue,
            }
            body["jobs_active"] = app.tasks.active_count()
        return JSONResponse(body, status_code=200 if app is not None else 503, headers={"Cache-Control": "no-store"})

    server.custom_route("/health", methods=["GET"])(health)


def run_http(server: ImgToolsServer, settings: Settings, host: str, port: int) -> None:
    security = transport_security(settings, host, port)
    log.info(
        "serving MCP at http://%s:%d/mcp (%s); Host accepted: %s",
        _host_literal(host), port, "bearer token required" if settings.auth_token else "no token", ", ".join(security.allowed_hosts),
    )
    add_health_route(server, settings)
    if settings.gallery:
        from .gallery import add_gallery_routes

        add_gallery_routes(server, settings, security)  # GET /gallery: same token, same Host/Origin rules
    app = server.streamable_http_app(
        streamable_http_path="/mcp",
        # Resumable streams: a client that loses its connection mid-call reconnects with Last-Event-ID and gets
        # the progress and the result it missed (http_events.py).
        event_store=BoundedEventStore(),
        retry_interval=RETRY_INTERVAL_MS,
        max_request_body_size=settings.max_request_bytes,
        transport_security=security,
        host=host,
    )
    verbose = logging.getLogger().getEffectiveLevel() <= logging.DEBUG
    config = uvicorn.Config(SessionScope(app), host=host, port=port, log_config=stderr_log_config(),
                            log_level="debug" if verbose else "info")
    anyio.run(uvicorn.Server(config).serve)


def stderr_log_config() -> dict[str, Any]:
    """uvicorn's logging with its access log on stderr too: under stdio stdout is the MCP channel, and over HTTP
    a process manager should find every log line in one stream."""
    from uvicorn.config import LOGGING_CONFIG

    config = copy.deepcopy(LOGGING_CONFIG)
    for handler in config["handlers"].values():
        handler["stream"] = "ext://sys.stderr"
    return config
