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
TOOL_LIST_TOKEN_BUDGET = 8_000


def hint(annotations: object, name: str) -> bool:
    """A tool hint as a host reads it: a hint left out of the list has MCP's default value."""
    from imgtools_mcp.tools.schemas import HINT_DEFAULTS

    value = getattr(annotations, name)
    return HINT_DEFAULTS[name] if value is None else value


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
            assert hint(annotations, "read_only_hint") is True, tool.name
        if tool.name in MAKES_IMAGES:
            assert hint(annotations, "read_only_hint") is False and hint(annotations, "idempotent_hint") is False, tool.name
            assert annotations.destructive_hint is False, tool.name  # MCP's default is destructive: said explicitly
        # Open-world follows from what a tool can do: fetch an http(s) image (edit, inpaint, a sweep over them) or
        # call the VLM provider.
        if tool.name in CALLS_THE_VLM or takes_media(tool.input_schema):
            assert hint(annotations, "open_world_hint") is True, tool.name


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
        assert hint(tools[name].annotations, "open_world_hint") is True, name


PROBES = (None, 0, -1, 0.5, 7, 10**7, "", "x", "euler", True, [], [1], {}, {"name": "x"})


def _without_nested_closed_records(schema: dict) -> dict:
    """The request schema as listed promises less than the server enforces in one way only: nested records do not
    say additionalProperties: false (the server still refuses unknown keys)."""
    defs = {name: {k: v for k, v in sub.items() if k != "additionalProperties"} for name, sub in schema.get("$defs", {}).items()}
    return {**schema, "$defs": defs} if defs else schema


def _variants(properties: dict, base: dict) -> list[dict]:
    """`base` with each property in turn set to each probe value, or removed."""
    out = []
    for name in properties:
        out.append({key: value for key, value in base.items() if key != name})
        out += [{**base, name: value} for value in PROBES]
    return out


async def test_listed_schemas_accept_exactly_what_the_full_schemas_accept(client: Client, settings) -> None:
    # The compaction (shared fields, merged types, no titles or repeated descriptions) must not change which
    # arguments a client's validator accepts: each listed schema is compared with the server's full one.
    from jsonschema import Draft202012Validator
    from mcp.server.mcpserver import MCPServer

    from imgtools_mcp.server import build_server

    full = {tool.name: tool.input_schema for tool in await MCPServer.list_tools(build_server(settings))}
    listed = {tool.name: tool.input_schema for tool in (await client.list_tools()).tools}
    starts = {
        "generate": {"prompt": "a"}, "edit": {"prompt": "a", "image": "i"}, "inpaint": {"prompt": "a", "image": "i", "mask": "m"},
        "sweep": {"base": {"prompt": "a"}, "x": {"param": "seed", "values": [1]}}, "refine": {"goal": "a"},
    }
    checked = 0
    for name, schema in listed.items():
        original = Draft202012Validator(_without_nested_closed_records(full[name]))
        compact = Draft202012Validator(schema)
        start = starts.get(name, {key: "x" for key in schema.get("required", [])})
        cases = _variants(full[name].get("properties", {}), start)
        if name == "sweep":
            for tool, base in (("generate", {"prompt": "a"}), ("edit", starts["edit"]), ("inpaint", starts["inpaint"])):
                member = full[name]["$defs"][f"{tool.capitalize()}Base"]
                nested = [{"control": [{"type": "canny", "image": "i"}]}, {"loras": [{"name": "l"}]}]
                for changed in _variants(member["properties"], {**base, "tool": tool}) + [{**base, "tool": tool, **n} for n in nested]:
                    cases.append({**start, "base": changed})
                cases.append({**start, "base": {**base, "tool": tool}, "x": {"param": "seed", "values": [1.5, "a", True, [64, 64], None]}})
        for arguments in cases:
            assert original.is_valid(arguments) == compact.is_valid(arguments), (name, arguments)
            checked += 1
    assert checked > 1000, checked


async def test_listed_annotations_mean_what_the_full_ones_say(client: Client, settings) -> None:
    # Hints equal to MCP's defaults are left out of the list; read with those defaults, nothing changes.
    from mcp.server.mcpserver import MCPServer

    from imgtools_mcp.server import build_server
    from imgtools_mcp.tools.schemas import HINT_DEFAULTS

    full = {tool.name: tool.annotations for tool in await MCPServer.list_tools(build_server(settings))}
    listed = {tool.name: tool.annotations for tool in (await client.list_tools()).tools}
    assert set(listed) <= set(full)  # the full list also has the viewer's app-only tool
    for name, annotations in listed.items():
        assert annotations.title == full[name].title, name
        for field in HINT_DEFAULTS:
            assert hint(annotations, field) == hint(full[name], field), (name, field)
    assert any(getattr(a, f) is None for a in listed.values() for f in HINT_DEFAULTS)  # something was left out
