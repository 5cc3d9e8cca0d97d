"""The MCP App viewer (`ui://imgtools/viewer`): its HTML resource, the `_meta` that binds tools to it, its app-only action tool.

Hosts that speak MCP Apps (extension `io.modelcontextprotocol/ui`) render image tools' results in the
viewer; every other host gets exactly the results it got before, and does not even see the viewer's
resource or its app-only tool in its lists (`hide_app_only_for_plain_clients`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from functools import cache
from importlib import resources
from typing import Annotated, Any, Literal

from mcp.server.apps import APP_MIME_TYPE, EXTENSION_ID, ResourceCsp, ResourcePermissions, client_supports_apps
from mcp.server.context import CallNext, HandlerResult, ServerRequestContext
from mcp.server.extension import Extension, ResourceBinding, ToolBinding
from mcp.server.mcpserver import Context
from mcp.server.mcpserver.exceptions import ToolError
from mcp.server.mcpserver.resources import TextResource
from mcp_types import CallToolResult, ToolAnnotations
from pydantic import Field

log = logging.getLogger(__name__)

VIEWER_URI = "ui://imgtools/viewer"
ACTION_TOOL = "viewer_action"
BOUND_TOOLS = frozenset({"generate", "edit", "inpaint", "upscale", "sweep", "refine"})
"""Tools whose results the viewer renders; a name not registered on the server (upscale, before it exists) binds nothing."""

# Which tool re-makes an image with a new seed, by the tool recorded in its sidecar (a refine candidate is a generate).
RERUN_TOOL = {"generate": "generate", "refine": "generate", "edit": "edit", "inpaint": "inpaint"}

# Everything the page needs is inline and every image arrives through resources/read as a data: URL,
# so the page asks for no network origin at all; copying infotext is the one browser permission it uses.
VIEWER_CSP = ResourceCsp(connect_domains=[], resource_domains=[], frame_domains=[], base_uri_domains=[])
VIEWER_PERMISSIONS = ResourcePermissions(clipboard_write={})


@cache
def viewer_html() -> str:
    """The single self-contained page (inline CSS and JS), shipped as package data."""
    return resources.files(__package__).joinpath("viewer.html").read_text(encoding="utf-8")


def tool_meta(name: str) -> dict[str, Any] | None:
    """The `_meta` a tool is registered with: the viewer binding for image tools, nothing for the rest."""
    return {"ui": {"resourceUri": VIEWER_URI}} if name in BOUND_TOOLS else None


class ViewerApp(Extension):
    """Declares the Apps extension, serves the viewer page and adds the one tool only the viewer calls."""

    identifier = EXTENSION_ID

    def resources(self) -> Sequence[ResourceBinding]:
        ui = {
            "csp": VIEWER_CSP.model_dump(by_alias=True, exclude_none=True),
            "permissions": VIEWER_PERMISSIONS.model_dump(by_alias=True, exclude_none=True),
            "prefersBorder": True,
        }
        page = TextResource(
            uri=VIEWER_URI,
            name="viewer",
            title="imgtools viewer",
            description="Full-size view, before/after, sweep explorer and refine timeline for image tool results",
            mime_type=APP_MIME_TYPE,
            meta={"ui": ui},
            text=viewer_html(),
        )
        return [ResourceBinding(resource=page)]

    def tools(self) -> Sequence[ToolBinding]:
        return [
            ToolBinding(
                fn=viewer_action,
                meta={"ui": {"resourceUri": VIEWER_URI, "visibility": ["app"]}},
                kwargs={
                    "name": ACTION_TOOL,
                    "title": "Viewer action",
                    "description": "Called by the imgtools viewer: vary an image's seed, edit it or upscale it as a "
                    "background job (the viewer polls get_job).",
                    "annotations": ToolAnnotations(
                        title="Viewer action", read_only_hint=False, destructive_hint=False, idempotent_hint=False,
                        open_world_hint=False,
                    ),
                    "structured_output": False,
                },
            )
        ]


async def viewer_action(
    action: Annotated[Literal["vary_seed", "edit", "upscale"], Field(description="What to do with the image")],
    image_id: Annotated[str, Field(min_length=1, max_length=200, description="An output id or imgtools://images/<id>")],
    ctx: Context,
    prompt: Annotated[
        str | None, Field(max_length=4000, description="edit: what to change (required for edit)")
    ] = None,
) -> CallToolResult:
    """Run the tool an action stands for, in the background, and return that tool's own answer (a job ticket)."""
    if not client_supports_apps(ctx):
        raise ToolError(f"{ACTION_TOOL}: only the imgtools viewer app calls this tool; use generate, edit or upscale")
    app = ctx.request_context.lifespan_context
    image_id = image_id.removeprefix("imgtools://images/")
    try:
        metadata = app.store.read_metadata(image_id)
    except KeyError:
        raise ToolError(f"image_id: unknown output id {image_id!r}") from None
    server = ctx.mcp_server
    schemas = {tool.name: tool.input_schema.get("properties", {}) for tool in await server.list_tools()}
    if action == "vary_seed":
        made_by = metadata.get("tool")
        tool = RERUN_TOOL.get(made_by)
        if tool is None:
            raise ToolError(f"image_id: {image_id} was made by {made_by}, not generate/edit/inpaint; pick one of its images")
        recorded = metadata.get("parameters") or {}
        # The recorded parameters are the ones actually used; keep those the tool takes, drop the seed for a fresh one.
        arguments = {k: v for k, v in recorded.items() if k in schemas[tool] and v is not None and k not in ("seed", "num_images")}
    elif action == "edit":
        if not prompt or not prompt.strip():
            raise ToolError("prompt: say what to change in the image (required for action=edit)")
        tool, arguments = "edit", {"image": image_id, "prompt": prompt.strip()}
    else:
        tool, arguments = "upscale", {"image": image_id}
        if tool not in schemas:
            raise ToolError("action: this server has no upscale tool; allowed here: vary_seed, edit")
    if "background" in schemas[tool]:
        arguments["background"] = True
    log.info("viewer action %s on %s runs %s", action, image_id, tool)
    result = await server.call_tool(tool, arguments, ctx)
    if not isinstance(result, CallToolResult):  # an input-required answer; the image tools never ask for input
        raise ToolError(f"{tool}: answered with {type(result).__name__}, which the viewer cannot show")
    return result


def _is_app_only(entry: Any) -> bool:
    meta = entry.get("_meta") if isinstance(entry, dict) else getattr(entry, "meta", None)
    ui = (meta or {}).get("ui") or {}
    visibility = ui.get("visibility")
    return visibility is not None and "model" not in visibility


def _is_ui_resource(entry: Any) -> bool:
    uri = entry.get("uri") if isinstance(entry, dict) else getattr(entry, "uri", "")
    return str(uri).startswith("ui://")


async def hide_app_only_for_plain_clients(ctx: ServerRequestContext[Any, Any], call_next: CallNext) -> HandlerResult:
    """Server middleware: a client that did not negotiate MCP Apps lists exactly the tools and resources it did before.

    Apps hosts filter app-only tools themselves (the spec requires it); a plain client cannot know to,
    so the viewer's tool and page are left out of its lists.
    """
    result = await call_next(ctx)
    if ctx.method not in ("tools/list", "resources/list") or result is None or client_supports_apps(ctx):
        return result
    key, drop = ("tools", _is_app_only) if ctx.method == "tools/list" else ("resources", _is_ui_resource)
    if isinstance(result, dict):
        entries = result.get(key)
        if entries:
            return {**result, key: [e for e in entries if not drop(e)]}
        return result
    entries = getattr(result, key, None)
    if entries:
        return result.model_copy(update={key: [e for e in entries if not drop(e)]})
    return result
