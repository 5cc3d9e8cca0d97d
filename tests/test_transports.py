"""The server as a subprocess: stdio (how desktop hosts run it) and Streamable HTTP (how a team shares it)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import anyio
import httpx
import pytest
from mcp import Client, StdioServerParameters
from PIL import Image
from server_process import SUITE_SETTINGS

pytestmark = [pytest.mark.anyio, pytest.mark.slow]


def server_env(model: Path, output: Path, **extra: str) -> dict[str, str]:
    # The developer's IMGTOOLS_* settings stay out, except the suite's backend and throwaway cache (conftest).
    env = {k: v for k, v in os.environ.items() if not k.startswith("IMGTOOLS_") or k in SUITE_SETTINGS}
    env.update(IMGTOOLS_MODEL=str(model), IMGTOOLS_OUTPUT_DIR=str(output), IMGTOOLS_DEVICE="cpu", HF_HUB_OFFLINE="1", **extra)
    return env


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def http_server(tiny_sd15: Path, tmp_path: Path) -> Iterator[str]:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "imgtools_mcp.cli", "serve", "--transport", "http", "--port", str(port)],
        env=server_env(tiny_sd15, tmp_path / "out"),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    url = f"http://127.0.0.1:{port}/mcp"
    try:
        with anyio.from_thread.start_blocking_portal() as portal:
            portal.call(_wait_listening, port, proc)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()


async def _wait_listening(port: int, proc: subprocess.Popen) -> None:
    with anyio.fail_after(60):
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"server exited: {proc.stderr.read().decode()[-2000:]}")
            try:
                stream = await anyio.connect_tcp("127.0.0.1", port)
            except OSError:
                await anyio.sleep(0.1)  # the subprocess is still importing torch; poll its port
                continue
            await stream.aclose()
            return


async def check_generate(client: Client) -> None:
    tools = {tool.name for tool in (await client.list_tools()).tools}
    assert "generate" in tools
    steps: list[float] = []

    async def progress(done: float, total: float | None, message: str | None) -> None:
        if (message or "").startswith("step "):  # a fresh server says what it loads first, below step 1
            steps.append(done)

    result = await client.call_tool(
        "generate", {"prompt": "over the wire", "width": 64, "height": 64, "steps": 3, "seed": 9}, progress_callback=progress
    )
    assert not result.is_error, result.content
    assert steps == [1, 2, 3]
    image = result.structured_content["images"][0]
    assert Image.open(image["path"]).size == (64, 64)
    bad = await client.call_tool("generate", {"prompt": "x", "width": 65})
    assert bad.is_error and "width" in bad.content[0].text
    again = await client.call_tool("generate", {"prompt": "still serving", "width": 64, "height": 64, "steps": 1})
    assert not again.is_error


async def test_stdio_subprocess(tiny_sd15: Path, tmp_path: Path) -> None:
    params = StdioServerParameters(
        command=sys.executable, args=["-m", "imgtools_mcp.cli", "serve"], env=server_env(tiny_sd15, tmp_path / "out")
    )
    with anyio.fail_after(120):
        async with Client(params) as client:
            await check_generate(client)


async def test_http_subprocess(http_server: str) -> None:
    with anyio.fail_after(120):
        async with Client(http_server) as client:
            await check_generate(client)


def test_cli_generate_writes_png(tiny_sd15: Path, tmp_path: Path) -> None:
    out = tmp_path / "cli.png"
    proc = subprocess.run(
        [sys.executable, "-m", "imgtools_mcp.cli", "generate", "a shell prompt", "-o", str(out),
         "--width", "64", "--height", "64", "--steps", "2", "--seed", "4"],
        env=server_env(tiny_sd15, tmp_path / "out"), capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert Image.open(out).size == (64, 64)
    assert "step 2 / 2" in proc.stderr  # the progress bar
    assert "Seed: 4" in Image.open(out).text["parameters"]


def test_cli_doctor_json(tiny_sd15: Path, tmp_path: Path) -> None:
    import json

    proc = subprocess.run(
        [sys.executable, "-m", "imgtools_mcp.cli", "doctor", "--json"],
        env=server_env(tiny_sd15, tmp_path / "out"), capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["device"] == "cpu"
    assert report["dtype"]["value"] in ("bf16", "fp32") and report["dtype"]["reason"]
    assert report["model"]["family"] == "sd1"
    assert report["vlm"]["key_set"] is False


def test_cli_make_test_model(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "imgtools_mcp.cli", "make-test-model", str(tmp_path / "m"), "--family", "sdxl"],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "m" / "model_index.json").is_file()
    assert "StableDiffusionXLPipeline" in (tmp_path / "m" / "model_index.json").read_text()
