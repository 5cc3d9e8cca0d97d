"""What a model reads: every tool has a title, annotations, a short description and described parameters."""

from __future__ import annotations

import json

import pytest
from mcp import Client

pytestmark = pytest.mark.anyio

SPEC_TOOLS = {
    "generate", "edit", "inpaint", "sweep", "describe_image", "describe_video", "critique", "refine",
    "list_models", "engine_status", "get_job", "cancel_job",
}
READ_ONLY = {"describe_image", "describe_video", "critique", "list_models", "engine_status", "get_job"}
OPEN_WORLD = {"describe_image", "describe_video", "critique", "refine"}
MAKES_IMAGES = {"generate", "edit", "inpaint", "sweep", "refine"}
DESCRIPTION_BUDGET = 900  # characters per tool: a tool list that floods the context is a cost too
TOOL_LIST_BUDGET = 40_000  # names, descriptions and input schemas of every tool, as JSON


async def test_every_spec_tool_is_listed(client: Client) -> None:
    names = {tool.name for tool in (await client.list_tools()).tools}
    assert SPEC_TOOLS <= names, SPEC_TOOLS - names


async def test_titles_annotations_descriptions_parameters(client: Client) -> None:
    tools = (await client.list_tools()).tools
    for tool in tools:
        assert tool.title, tool.name
        assert tool.annotations is not None and tool.annotations.title, tool.name
        assert tool.description and len(tool.description) <= DESCRIPTION_BUDGET, (tool.name, len(tool.description or ""))
        for name, schema in tool.input_schema.get("properties", {}).items():
            assert schema.get("description"), f"{tool.name}.{name} has no description"
        annotations = tool.annotations
        if tool.name in READ_ONLY:
            assert annotations.read_only_hint is True, tool.name
        if tool.name in MAKES_IMAGES:
            assert annotations.read_only_hint is False and annotations.idempotent_hint is False, tool.name
            assert annotations.destructive_hint is False, tool.name
        if tool.name in OPEN_WORLD:
            assert annotations.open_world_hint is True, tool.name
    # Output schemas are for the client; what a host puts in the model's context is the rest.
    listed = [{"name": t.name, "description": t.description, "inputSchema": t.input_schema} for t in tools]
    assert len(json.dumps(listed)) <= TOOL_LIST_BUDGET, len(json.dumps(listed))


async def test_image_inputs_accept_urls_so_they_are_open_world(client: Client) -> None:
    # edit/inpaint may fetch an http(s) URL given as the image, so hosts should know they reach outside.
    tools = {tool.name: tool for tool in (await client.list_tools()).tools}
    for name in ("edit", "inpaint"):
        assert tools[name].annotations.open_world_hint is True, name
