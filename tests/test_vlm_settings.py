"""The VLM settings through the MCP client: OpenRouter attribution headers by default (overridable), one deadline
per call with the real retry count, and progress while the VLM thinks."""

from __future__ import annotations

import io
import base64
import time
from pathlib import Path

import pytest
from mcp import Client
from openai_loopback import OpenAILoopback, Scripted
from PIL import Image

from imgtools_mcp.config import PROJECT_TITLE, PROJECT_URL, Settings
from imgtools_mcp.server import build_server

pytestmark = pytest.mark.anyio
KEY = "test-key"


def image_arg() -> dict[str, list[str]]:
    buffer = io.BytesIO()
    Image.new("RGB", (16, 16), (90, 90, 90)).save(buffer, "PNG")
    return {"images": ["data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()]}


def settings_for(tmp_path: Path, vlm: OpenAILoopback, **extra: object) -> Settings:
    return Settings(output_dir=tmp_path / "out", device="cpu", hf_offline=True, vlm_api_key=KEY,
                    vlm_base_url=vlm.openrouter_base_url, vlm_provider="openrouter", **extra)


async def describe(settings: Settings, **call: object):
    async with Client(build_server(settings)) as client:
        return await client.call_tool("describe_image", image_arg(), **call)


async def test_openrouter_gets_the_projects_attribution_unless_told_otherwise(tmp_path: Path) -> None:
    with OpenAILoopback(api_key=KEY) as vlm:
        assert not (await describe(settings_for(tmp_path, vlm))).is_error
        assert not (await describe(settings_for(tmp_path, vlm, vlm_app_url="https://me.example/app",
                                                vlm_app_title="My App"))).is_error
        assert not (await describe(settings_for(tmp_path, vlm, vlm_app_url="", vlm_app_title=""))).is_error
        sent = [request.headers for request in vlm.chat_requests]
    assert (sent[0]["http-referer"], sent[0]["x-title"]) == (PROJECT_URL, PROJECT_TITLE)
    assert (sent[1]["http-referer"], sent[1]["x-title"]) == ("https://me.example/app", "My App")
    assert "http-referer" not in sent[2] and "x-title" not in sent[2]


async def test_a_stalled_vlm_costs_one_timeout_and_the_error_counts_real_retries(tmp_path: Path) -> None:
    with OpenAILoopback(api_key=KEY) as vlm:
        vlm.script([Scripted.delay(8)] * 4)
        started = time.monotonic()
        result = await describe(settings_for(tmp_path, vlm, vlm_timeout_s=1.0))
        elapsed = time.monotonic() - started
        requests = len(vlm.chat_requests)
    assert result.is_error and elapsed < 6, elapsed
    text = result.content[0].text
    assert "within 1 s" in text and "IMGTOOLS_VLM_TIMEOUT_S" in text and "0 retries made" in text, text
    assert requests == 1


async def test_waiting_for_the_vlm_sends_progress(tmp_path: Path) -> None:
    messages: list[str] = []

    async def progress(done: float, total: float | None, message: str | None) -> None:
        messages.append(message or "")

    with OpenAILoopback(api_key=KEY) as vlm:
        vlm.script([Scripted.delay(2.6)])
        result = await describe(settings_for(tmp_path, vlm), progress_callback=progress)
    assert not result.is_error, result.content
    assert any(message.startswith("waiting for the VLM") for message in messages), messages
