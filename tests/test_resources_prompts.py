"""Resources and prompts through the MCP client: recent outputs are listed newest first, an unknown image id and
an unknown or incomplete prompt are invalid-params errors (-32602) with no server traceback."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from mcp import Client
from mcp.shared.exceptions import MCPError
from mcp_types import INVALID_PARAMS
from PIL import Image

from imgtools_mcp.config import Settings
from imgtools_mcp.server import build_server
from imgtools_mcp.store import OutputStore

pytestmark = pytest.mark.anyio


def no_tracebacks(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [record.getMessage() for record in caplog.records if record.exc_info or record.levelno >= logging.ERROR]


async def test_recent_outputs_are_listed_newest_first(tmp_path: Path, tiny_sd15: Path) -> None:
    settings = Settings(model=str(tiny_sd15), output_dir=tmp_path / "out", device="cpu", hf_offline=True)
    store = OutputStore(settings.output_dir)
    older = [store.save(Image.new("RGB", (8, 8)), "old", {}).id for _ in range(3)]
    async with Client(build_server(settings)) as client:
        made = await client.call_tool("generate", {"prompt": "x", "steps": 2, "width": 64, "height": 64})
        listed = (await client.list_resources()).resources
        listed_outputs = [r for r in listed if r.uri.startswith("imgtools://images/")]
        read = await client.read_resource(listed_outputs[0].uri)
    new_id = made.structured_content["images"][0]["id"]
    assert [r.name for r in listed_outputs] == [new_id, *reversed(older)]
    assert all(r.mime_type == "image/png" for r in listed_outputs)
    assert read.contents[0].mime_type == "image/png"


async def test_recent_outputs_are_capped(tmp_path: Path) -> None:
    from imgtools_mcp.tools.resources import RECENT_OUTPUTS, recent_outputs

    store = OutputStore(tmp_path)
    for _ in range(RECENT_OUTPUTS + 3):
        store.save(Image.new("RGB", (2, 2)), "x", {})
    assert len(recent_outputs(store)) == RECENT_OUTPUTS


async def test_unknown_ids_and_prompts_are_invalid_params(settings: Settings, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    async with Client(build_server(settings)) as client:
        for uri in ("imgtools://images/20990101-000000-deadbeef", "imgtools://images/20990101-000000-deadbeef/metadata"):
            with pytest.raises(MCPError) as missing:
                await client.read_resource(uri)
            assert missing.value.code == INVALID_PARAMS and "unknown image id" in missing.value.error.message
        with pytest.raises(MCPError) as unknown:
            await client.get_prompt("no_such_prompt", {})
        assert unknown.value.code == INVALID_PARAMS and "art_direct" in unknown.value.error.message
        with pytest.raises(MCPError) as incomplete:
            await client.get_prompt("art_direct", {})
        assert incomplete.value.code == INVALID_PARAMS and "goal" in incomplete.value.error.message
        with pytest.raises(MCPError) as extra:
            await client.get_prompt("art_direct", {"goal": "a fox", "colour": "red"})
        assert extra.value.code == INVALID_PARAMS and "colour" in extra.value.error.message
        fine = await client.get_prompt("art_direct", {"goal": "a fox"})
    assert "a fox" in fine.messages[0].content.text
    assert no_tracebacks(caplog) == []
