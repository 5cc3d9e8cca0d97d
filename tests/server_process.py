"""The server as an HTTP subprocess on loopback, the way a team runs it: start, stop, SIGKILL, restart, connect."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import httpx
import httpx2
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

TOKEN = "test-token-0123456789abcdef"


# The suite's own settings (conftest.backend_environment) that subprocess servers keep: torch, and a throwaway
# compile cache instead of the user's.
SUITE_SETTINGS = ("IMGTOOLS_BACKEND", "IMGTOOLS_CACHE_DIR")


def server_env(model: Path, output: Path, **extra: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if (not k.startswith("IMGTOOLS_") or k in SUITE_SETTINGS) and k != "OPENROUTER_API_KEY"
    }
    env.update(
        IMGTOOLS_MODEL=str(model),
        IMGTOOLS_OUTPUT_DIR=str(output),
        IMGTOOLS_DEVICE="cpu",
        HF_HUB_OFFLINE="1",
        TOKENIZERS_PARALLELISM="false",
        **extra,
    )
    return env


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class HttpServer:
    """`imgtools-mcp serve --transport http` on 127.0.0.1; stderr goes to a file so a chatty server never blocks."""

    def __init__(self, model: Path, output: Path, log_dir: Path, **env: str) -> None:
        self.env = server_env(model, output, **env)
        self.log_dir = log_dir
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"{self.base}/mcp"

    @property
    def log_path(self) -> Path:
        return self.log_dir / f"server-{self.port}-{self.starts}.log"

    @property
    def stdout_path(self) -> Path:
        """What the server wrote to stdout: nothing is expected there over HTTP (stdout is the stdio channel)."""
        return self.log_dir / f"server-{self.port}-{self.starts}.stdout"

    def log_tail(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-3000:]
        except OSError:
            return ""

    async def start(self, timeout: float = 120) -> "HttpServer":
        self.starts += 1
        with open(self.log_path, "wb") as log, open(self.stdout_path, "wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "imgtools_mcp.cli", "serve", "--transport", "http", "--port", str(self.port)],
                env=self.env,
                stdout=out,
                stderr=log,
            )
        # The subprocess imports torch first; /health answers 200 once the lifespan (engine, store, jobs) is up.
        with anyio.fail_after(timeout):
            async with httpx.AsyncClient() as http:
                while True:
                    if self.proc.poll() is not None:
                        raise RuntimeError(f"server exited with {self.proc.returncode}: {self.log_tail()}")
                    try:
                        if (await http.get(f"{self.base}/health")).status_code == 200:
                            return self
                    except httpx.TransportError:
                        pass
                    await anyio.sleep(0.1)

    async def health(self) -> dict:
        async with httpx.AsyncClient() as http:
            response = await http.get(f"{self.base}/health")
            response.raise_for_status()
            return response.json()

    def kill(self) -> None:
        """SIGKILL: no shutdown code runs, as when the machine loses power or the OOM killer strikes."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=20)


@asynccontextmanager
async def connect(url: str, token: str | None = None, **headers: str) -> AsyncIterator[Client]:
    """The real MCP client over Streamable HTTP, with a bearer token when given."""
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    # httpx2 is the HTTP client the SDK's transport is written for; long reads carry SSE progress streams.
    async with httpx2.AsyncClient(headers=headers, timeout=httpx2.Timeout(30, read=300)) as http:
        async with Client(streamable_http_client(url, http_client=http)) as client:
            yield client
