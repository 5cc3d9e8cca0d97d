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
CALLS_THE_VLM = {"describe_image", "describe_video", "critique", "refine"}
MAKES_IMAGES = {"generate", "edit", "inpaint", "sweep", "refine"}
MEDIA_INPUTS = {"image", "images", "mask", "video"}  # parameters that take references, http(s) URLs among them
DESCRIPTION_BUDGET = 900  # characters per tool: a tool list that floods the context is a cost too
# The whole tools/list answer as a host receives it (names, descriptions, input and output schemas, annotations),
# estimated at 4 characters of compact JSON per token, the usual rule of thumb for English and JSON.
TOOL_LIST_TOKEN_BUDGET = 11_500


def takes_media(schema: object) -> bool:
    """Whether any (nested) parameter of a schema takes an image or video reference."""
    if isinstance(schema, dict):
        properties = schema.get("properties", {})
        if MEDIA_INPUTS & set(properties):
            return True
        return any(takes_media(value) for value in schema.values())
    if isinstance(schema, list):
        return any(takes_media(value) for value in schema)
    return False


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
        # Open-world follows from what a tool can do: fetch an http(s) image (edit, inpaint, a sweep over them) or
        # call the VLM provider.
        if tool.name in CALLS_THE_VLM or takes_media(tool.input_schema):
            assert annotations.open_world_hint is True, tool.name


async def test_the_whole_tool_list_fits_its_token_budget(client: Client) -> None:
    listed = (await client.list_tools()).model_dump(mode="json", by_alias=True, exclude_none=True)
    tokens = len(json.dumps(listed["tools"], separators=(",", ":"))) / 4
    assert tokens <= TOOL_LIST_TOKEN_BUDGET, tokens
    for tool in listed["tools"]:
        text = json.dumps(tool)
        assert '"title": "' not in text.replace(f'"title": "{tool.get("title")}"', ""), tool["name"]  # no per-field titles


async def test_sweep_lists_its_base_and_values_schemas(client: Client) -> None:
    sweep = {tool.name: tool for tool in (await client.list_tools()).tools}["sweep"].input_schema
    base = sweep["properties"]["base"]
    assert base["discriminator"]["propertyName"] == "tool"
    members = [sweep["$defs"][option["$ref"].rsplit("/", 1)[-1]] for option in base["oneOf"]]
    assert [m["properties"]["tool"]["const"] for m in members] == ["generate", "edit", "inpaint"]
    assert "image" in members[1]["required"] and "mask_shapes" in members[2]["properties"]
    values = sweep["$defs"]["SweepAxis"]["properties"]["values"]
    kinds = json.dumps(values["items"])
    assert all(kind in kinds for kind in ('"number"', '"integer"', '"string"', '"boolean"', '"null"')), kinds


async def test_image_inputs_accept_urls_so_they_are_open_world(client: Client) -> None:
    # edit/inpaint may fetch an http(s) URL given as the image, so hosts should know they reach outside.
    tools = {tool.name: tool for tool in (await client.list_tools()).tools}
    for name in ("edit", "inpaint"):
        assert tools[name].annotations.open_world_hint is True, name
