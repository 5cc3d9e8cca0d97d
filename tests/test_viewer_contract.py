"""The viewer changes nothing for hosts without MCP Apps: same results, same lists, plus `_meta` on image tools."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from browser_host import apps_client
from mcp import Client
from mcp.server.apps import APP_MIME_TYPE, EXTENSION_ID

from imgtools_mcp.config import Settings
from imgtools_mcp.server import build_server
from imgtools_mcp.ui.viewer import ACTION_TOOL, BOUND_TOOLS, VIEWER_URI

pytestmark = pytest.mark.anyio
SMALL = {"width": 64, "height": 64, "steps": 2}
ID = re.compile(r"\d{8}-\d{6}-[0-9a-f]{8}")


VARYING = {"timings", "seconds", "load_seconds", "engine"}  # wall times and the free memory a plan was judged by


def _without_varying(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_varying(v) for k, v in value.items() if k not in VARYING}
    if isinstance(value, list):
        return [_without_varying(v) for v in value]
    return value


def normalised(result: Any) -> str:
    """A result with what differs between two identical calls (new ids, wall times) blanked out."""
    dumped = _without_varying(result.model_dump(mode="json", by_alias=True, exclude_none=True))
    text = ID.sub("<id>", json.dumps(dumped, sort_keys=True))
    text = re.sub(r"\b(sweep|refine)-[0-9a-f]{8}\b", r"\1-<id>", text)
    return re.sub(r"\d+(\.\d+)? s\b", "<t> s", text)


async def test_results_are_the_same_for_plain_and_apps_clients(settings: Settings) -> None:
    server = build_server(settings)
    async with Client(server) as plain, apps_client(server) as apps:
        for name, arguments in [
            ("generate", {"prompt": "a red cube", **SMALL, "seed": 4}),
            ("sweep", {"base": {"prompt": "a red cube", **SMALL, "seed": 4}, "x": {"param": "steps", "values": [1, 2]}}),
        ]:
            first = await plain.call_tool(name, arguments)
            second = await apps.call_tool(name, arguments)
            assert not first.is_error, first.content[0].text
            # Thumbnails are byte-identical: same seed, same pixels; nothing viewer-specific is added for anyone.
            assert normalised(first) == normalised(second)
            assert [block.type for block in first.content][:3] == (
                ["text", "image", "resource_link"] if name == "generate" else [block.type for block in second.content][:3]
            )
            assert first.meta == second.meta


async def test_plain_clients_list_the_same_tools_and_resources_plus_tool_meta(settings: Settings) -> None:
    server = build_server(settings)
    async with Client(server) as plain, apps_client(server) as apps:
        plain_tools = {t.name: t for t in (await plain.list_tools()).tools}
        apps_tools = {t.name: t for t in (await apps.list_tools()).tools}
        # The app-only tool is listed only to clients that negotiated Apps (whose hosts keep it from the model).
        assert set(apps_tools) - set(plain_tools) == {ACTION_TOOL}
        assert apps_tools[ACTION_TOOL].meta == {"ui": {"resourceUri": VIEWER_URI, "visibility": ["app"]}}
        for name, tool in plain_tools.items():
            assert tool == apps_tools[name]
            assert tool.meta == ({"ui": {"resourceUri": VIEWER_URI}} if name in BOUND_TOOLS else None), name
        assert {"generate", "edit", "inpaint", "sweep", "refine"} <= {n for n, t in plain_tools.items() if t.meta}

        plain_resources = [r.uri for r in (await plain.list_resources()).resources]
        apps_resources = {r.uri: r for r in (await apps.list_resources()).resources}
        assert VIEWER_URI not in plain_resources and VIEWER_URI in apps_resources
        assert apps_resources[VIEWER_URI].mime_type == APP_MIME_TYPE
        assert EXTENSION_ID in (apps.server_capabilities.extensions or {})


async def test_the_viewer_page_is_one_self_contained_file_with_an_honest_csp(settings: Settings) -> None:
    async with apps_client(build_server(settings)) as apps:
        read = await apps.read_resource(VIEWER_URI)
        listed = {r.uri: r for r in (await apps.list_resources()).resources}[VIEWER_URI]
    content = read.contents[0]
    assert content.mime_type == APP_MIME_TYPE
    html = content.text
    assert html.startswith("<!doctype html>") and len(html) < 80_000
    # Nothing loaded from anywhere: no external scripts, styles, images or fetches.
    assert not re.search(r"<(script|link|img|iframe)[^>]+(src|href)=", html)
    assert "fetch(" not in html and "XMLHttpRequest" not in html and "http://" not in html.replace("http://www.w3.org/2000/svg", "")
    assert listed.meta["ui"]["csp"] == {"connectDomains": [], "resourceDomains": [], "frameDomains": [], "baseUriDomains": []}
    assert listed.meta["ui"]["permissions"] == {"clipboardWrite": {}}


async def test_viewer_action_is_for_the_app_and_says_what_it_needs(settings: Settings) -> None:
    server = build_server(settings)
    async with Client(server) as plain, apps_client(server) as apps:
        made = await apps.call_tool("generate", {"prompt": "a red cube", **SMALL, "seed": 4})
        image_id = made.structured_content["images"][0]["id"]
        refused = await plain.call_tool(ACTION_TOOL, {"action": "vary_seed", "image_id": image_id})
        assert refused.is_error and "only the imgtools viewer app" in refused.content[0].text
        no_prompt = await apps.call_tool(ACTION_TOOL, {"action": "edit", "image_id": image_id})
        assert no_prompt.is_error and "prompt:" in no_prompt.content[0].text
        unknown = await apps.call_tool(ACTION_TOOL, {"action": "vary_seed", "image_id": "20990101-000000-00000000"})
        assert unknown.is_error and "image_id: unknown output id" in unknown.content[0].text
        bad = await apps.call_tool(ACTION_TOOL, {"action": "paint", "image_id": image_id})
        assert bad.is_error and "action" in bad.content[0].text
        # An edit action starts the edit tool in the background and answers with its job ticket.
        started = await apps.call_tool(ACTION_TOOL, {"action": "edit", "image_id": image_id, "prompt": "make it blue"})
        assert not started.is_error, started.content[0].text
        job_id = started.structured_content["job_id"]
        done = await apps.call_tool("get_job", {"job_id": job_id, "wait_s": 60})
        status = done.structured_content
        assert status["state"] == "done" and status["tool"] == "edit"
        edited = status["result"]["images"][0]["id"]
        # upscale has no background mode: the action answers with its finished result.
        upscaled = await apps.call_tool(ACTION_TOOL, {"action": "upscale", "image_id": image_id})
        assert not upscaled.is_error, upscaled.content[0].text
        enlarged = upscaled.structured_content["images"][0]
        assert (enlarged["width"], enlarged["height"]) == (128, 128)
    assert (settings.output_dir / f"{edited}.png").is_file()
    assert json.loads((settings.output_dir / f"{edited}.json").read_text())["parent"] == image_id
