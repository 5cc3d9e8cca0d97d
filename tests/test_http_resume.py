"""Over Streamable HTTP a dropped stream loses nothing: reconnecting with Last-Event-ID replays the progress and the
result of a call still running or already done, only to the session it belongs to. Also: the server's own log
(access lines included) goes to stderr, never stdout."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from server_process import HttpServer

pytestmark = [pytest.mark.slow, pytest.mark.anyio]
PROTOCOL = "2025-11-25"  # streams are primed with an event id (and `retry`) from this version on
STEPS = 6


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
def server(tiny_models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[HttpServer]:
    root = tmp_path_factory.mktemp("http-resume")
    srv = HttpServer(tiny_models["sd15"], root / "out", root)
    anyio.run(srv.start)
    try:
        yield srv
    finally:
        srv.stop()


async def events(response: httpx.Response) -> AsyncIterator[dict[str, Any]]:
    """Server-sent events as {id, event, data, retry}; `data` decoded from JSON where there is any."""
    event: dict[str, Any] = {}
    async for line in response.aiter_lines():
        if line == "":
            if event:
                if event.get("data"):
                    event["data"] = json.loads(event["data"])
                yield event
            event = {}
            continue
        name, _, value = line.partition(":")
        event[name] = value.removeprefix(" ")


class Session:
    def __init__(self, http: httpx.AsyncClient, url: str) -> None:
        self.http, self.url, self.id = http, url, ""

    def headers(self, **extra: str) -> dict[str, str]:
        sent = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json",
                "MCP-Protocol-Version": PROTOCOL, **extra}
        if self.id:
            sent["Mcp-Session-Id"] = self.id
        return sent

    async def open(self) -> Session:
        hello = {"jsonrpc": "2.0", "id": 0, "method": "initialize",
                 "params": {"protocolVersion": PROTOCOL, "capabilities": {}, "clientInfo": {"name": "resume", "version": "0"}}}
        async with self.http.stream("POST", self.url, json=hello, headers=self.headers()) as response:
            assert response.status_code == 200
            self.id = response.headers["mcp-session-id"]
            async for event in events(response):
                if isinstance(event.get("data"), dict) and event["data"].get("id") == 0:
                    break
        initialized = await self.http.post(self.url, json={"jsonrpc": "2.0", "method": "notifications/initialized"},
                                           headers=self.headers())
        assert initialized.status_code == 202
        return self


def generate_call(request_id: int) -> dict[str, Any]:
    arguments = {"prompt": "resume me", "steps": STEPS, "width": 64, "height": 64, "seed": 1}
    return {"jsonrpc": "2.0", "id": request_id, "method": "tools/call",
            "params": {"name": "generate", "arguments": arguments, "_meta": {"progressToken": "p1"}}}


async def test_a_dropped_stream_is_replayed_from_last_event_id(server: HttpServer) -> None:
    async with httpx.AsyncClient(timeout=httpx.Timeout(30, read=120)) as http:
        session = await Session(http, server.url).open()
        seen: list[dict[str, Any]] = []
        with anyio.fail_after(120):
            async with http.stream("POST", server.url, json=generate_call(7), headers=session.headers()) as response:
                assert response.status_code == 200
                async for event in events(response):
                    seen.append(event)
                    if isinstance(event.get("data"), dict) and event["data"].get("method") == "notifications/progress":
                        break  # the connection drops here, mid-call
        assert seen[0].get("retry") and seen[0].get("id"), seen[0]  # the priming event: where to resume, how soon
        last_id = seen[-1]["id"]
        progress_seen = seen[-1]["data"]["params"]["progress"]

        # Wait until the call has finished with nobody listening: everything after last_id now comes from the store.
        with anyio.fail_after(120):
            while (await server.health())["queue"]["running"]:
                await anyio.sleep(0.05)

        # Another session cannot replay this stream.
        other = await Session(http, server.url).open()
        with anyio.fail_after(30):
            async with http.stream("GET", server.url, headers=other.headers(**{"Last-Event-ID": last_id})) as response:
                stolen = [event async for event in events(response) if event.get("data")]
        assert stolen == []

        replayed: list[dict[str, Any]] = []
        with anyio.fail_after(120):
            async with http.stream("GET", server.url, headers=session.headers(**{"Last-Event-ID": last_id})) as response:
                assert response.status_code == 200
                async for event in events(response):
                    if not event.get("data"):
                        continue
                    replayed.append(event["data"])
                    if event["data"].get("id") == 7:
                        break
    progress = [m["params"]["progress"] for m in replayed if m.get("method") == "notifications/progress"]
    assert progress and min(progress) > progress_seen, (progress_seen, progress)  # only what was missed
    result = replayed[-1]
    assert result["id"] == 7 and not result["result"].get("isError"), result
    assert result["result"]["structuredContent"]["images"][0]["width"] == 64


def test_logs_go_to_stderr_and_stdout_stays_empty(server: HttpServer) -> None:
    # By now the module's requests (initialize, tools/call, GETs, /health polls) have all been logged.
    assert httpx.get(f"{server.base}/health", timeout=30).status_code == 200
    assert server.stdout_path.read_bytes() == b""
    log = server.log_path.read_text(errors="replace")
    assert '"GET /health HTTP/1.1" 200' in log and '"POST /mcp HTTP/1.1" 200' in log
