"""Streamable HTTP as a remote user meets it: bearer token, Host/Origin checks, body limit, /health, refused binds."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import anyio
import httpx
import pytest
from server_process import TOKEN, HttpServer, connect, free_port, server_env

pytestmark = pytest.mark.slow

INITIALIZE = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "probe", "version": "0"}},
}
MCP_HEADERS = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}
BODY_LIMIT = 256 * 1024


@pytest.fixture(scope="module")
def server(tiny_models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[HttpServer]:
    root = tmp_path_factory.mktemp("http-security")
    srv = HttpServer(
        tiny_models["sd15"],
        root / "out",
        root,
        IMGTOOLS_AUTH_TOKEN=TOKEN,
        IMGTOOLS_MAX_REQUEST_BYTES=str(BODY_LIMIT),
        IMGTOOLS_ALLOWED_HOSTS="imgtools.test",
        IMGTOOLS_ALLOWED_ORIGINS="https://app.imgtools.test",
    )
    anyio.run(srv.start)
    try:
        yield srv
    finally:
        srv.stop()


def post_initialize(server: HttpServer, token: str | None = None, **headers: str) -> httpx.Response:
    sent = dict(MCP_HEADERS)
    if token is not None:
        sent["Authorization"] = f"Bearer {token}"
    sent.update(headers)
    return httpx.post(server.url, json=INITIALIZE, headers=sent, timeout=30)


def test_health_answers_without_a_token_and_tells_nothing_sensitive(server: HttpServer) -> None:
    response = httpx.get(f"{server.base}/health", timeout=30)
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ok" and body["version"]
    assert set(body) <= {"status", "version", "queue", "jobs_active"}
    assert body["queue"]["waiting"] == 0 and body["queue"]["max_queue"] == 16
    text = response.text
    assert TOKEN not in text and "/" not in text.replace("\\/", "")  # no paths, no model folder
    assert "no-store" in response.headers["cache-control"]


@pytest.mark.parametrize(
    "authorization",
    [None, "Bearer wrong-token-0123456789abcdef", f"Bearer {TOKEN}x", f"Bearer {TOKEN[:-1]}", f"Basic {TOKEN}", "Bearer"],
)
def test_mcp_without_the_right_token_is_401(server: HttpServer, authorization: str | None) -> None:
    headers = dict(MCP_HEADERS)
    if authorization is not None:
        headers["Authorization"] = authorization
    response = httpx.post(server.url, json=INITIALIZE, headers=headers, timeout=30)
    assert response.status_code == 401, response.text
    assert response.headers["www-authenticate"].startswith("Bearer ")
    assert json.loads(response.text)["error"] == "invalid_token"


def test_a_static_token_advertises_no_oauth(server: HttpServer) -> None:
    """The 401 names the Bearer scheme only: no resource_metadata pointing OAuth clients at an authorization server
    that does not exist (the MCP Inspector would start an interactive OAuth flow), and no metadata documents."""
    response = post_initialize(server)
    assert response.status_code == 401
    assert "resource_metadata" not in response.headers["www-authenticate"]
    for path in ("/.well-known/oauth-protected-resource", "/.well-known/oauth-protected-resource/mcp",
                 "/.well-known/oauth-authorization-server"):
        assert httpx.get(server.base + path, timeout=30).status_code == 404, path


def test_the_right_token_is_accepted(server: HttpServer) -> None:
    response = post_initialize(server, TOKEN)
    assert response.status_code == 200, response.text
    assert "imgtools-mcp" in response.text  # the initialize result names the server


@pytest.mark.parametrize(
    "origin, status",
    [
        ("http://evil.example", 403),
        ("http://evil.example:{port}", 403),
        ("null", 403),
        ("http://127.0.0.1:{port}", 200),
        ("http://localhost:{port}", 200),
        ("https://app.imgtools.test", 200),  # IMGTOOLS_ALLOWED_ORIGINS
        ("http://127.0.0.1:1", 403),  # another local port is another site
    ],
)
def test_origin_is_checked(server: HttpServer, origin: str, status: int) -> None:
    response = post_initialize(server, TOKEN, Origin=origin.format(port=server.port))
    assert response.status_code == status, response.text


@pytest.mark.parametrize(
    "host, status",
    [
        ("evil.example", 421),
        ("evil.example:{port}", 421),
        ("127.0.0.1:1", 421),
        ("localhost:{port}", 200),
        ("imgtools.test", 200),  # IMGTOOLS_ALLOWED_HOSTS, any port
        ("imgtools.test:9443", 200),
    ],
)
def test_host_is_checked(server: HttpServer, host: str, status: int) -> None:
    response = post_initialize(server, TOKEN, Host=host.format(port=server.port))
    assert response.status_code == status, response.text


def test_a_body_over_the_limit_is_413(server: HttpServer) -> None:
    big = dict(INITIALIZE, params={**INITIALIZE["params"], "padding": "A" * (BODY_LIMIT + 1)})
    response = httpx.post(server.url, json=big, headers={**MCP_HEADERS, "Authorization": f"Bearer {TOKEN}"}, timeout=30)
    assert response.status_code == 413
    # The limit is checked after the token: an anonymous client learns nothing about it.
    anonymous = httpx.post(server.url, json=big, headers=MCP_HEADERS, timeout=30)
    assert anonymous.status_code == 401


@pytest.mark.anyio
async def test_mcp_client_with_the_token_generates(server: HttpServer) -> None:
    with anyio.fail_after(120):
        async with connect(server.url, TOKEN) as client:
            result = await client.call_tool("generate", {"prompt": "remote", "width": 64, "height": 64, "steps": 1})
            assert not result.is_error, result.content
            image = result.structured_content["images"][0]
            png = await client.read_resource(image["uri"])
            assert png.contents[0].mime_type == "image/png"


@pytest.mark.parametrize(
    "host, extra_env",
    [
        ("0.0.0.0", {}),
        ("::", {}),
        ("192.0.2.10", {}),
        ("0.0.0.0", {"IMGTOOLS_AUTH_TOKEN": ""}),  # an empty token is no token
    ],
)
def test_non_loopback_bind_without_a_token_is_refused(tmp_path: Path, host: str, extra_env: dict[str, str]) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "imgtools_mcp.cli", "serve", "--transport", "http", "--host", host, "--port", str(free_port())],
        env=server_env(tmp_path / "no-model", tmp_path / "out", **extra_env),
        capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 2, proc.stderr
    assert f"refusing to serve on {host} without a token" in proc.stderr
    assert "IMGTOOLS_AUTH_TOKEN" in proc.stderr


def test_a_short_token_is_a_configuration_error_that_never_shows_the_token(tmp_path: Path) -> None:
    secret = "s3cr3t-but-short"[:15]
    proc = subprocess.run(
        [sys.executable, "-m", "imgtools_mcp.cli", "serve", "--transport", "http", "--host", "0.0.0.0", "--port", str(free_port())],
        env=server_env(tmp_path / "no-model", tmp_path / "out", IMGTOOLS_AUTH_TOKEN=secret, IMGTOOLS_MAX_QUEUE="lots"),
        capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 2
    # One line per bad variable, naming it; the secret appears nowhere (pydantic's own text would echo it).
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 2, proc.stderr
    assert any("IMGTOOLS_AUTH_TOKEN" in line and "16 characters" in line for line in lines)
    assert any("IMGTOOLS_MAX_QUEUE" in line and "integer" in line for line in lines)
    assert secret not in proc.stderr + proc.stdout and "input_value" not in proc.stderr
