"""Builds the MCP server from a Settings object: lifespan (engine, store, tasks, VLM) and every tool family."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from pydantic import ValidationError

from . import __version__
from .app import AppContext
from .auth import StaticTokenVerifier, auth_settings
from .config import Settings
from .engine.base import build_engine
from .engine.engine import Engine
from .images.refs import ImageResolver, UrlPolicy
from .params import one_line_error
from .store import OutputStore
from .tasks import TaskManager
from .tools import critique, edit, engine_status, generate, inpaint, models, resources, sweep, tasks
from .tools import prompts, refine, upscale, vision
from .tools.schemas import compact_annotations, compact_tool_schemas
from .tools.vision_common import build_vlm
from .ui.viewer import ViewerApp, hide_app_only_for_plain_clients

log = logging.getLogger(__name__)

INSTRUCTIONS = (
    "Image tools on a local diffusers engine. Outputs are referenced by id or imgtools://images/<id>; "
    "pass them as `image` to edit/inpaint. Long calls accept background=true and return a job id for get_job."
)
TOOL_FAMILIES = (generate, edit, inpaint, upscale, sweep, models, engine_status, vision, critique, refine, tasks, resources, prompts)


class ImgToolsServer(MCPServer[AppContext]):
    """MCPServer whose argument errors read as one line naming the parameter, and which refuses unknown ones."""

    app_context: AppContext | None = None
    """The running lifespan's objects, for HTTP routes outside MCP (/health); None before start and after stop."""

    _listed: dict[int, tuple[Any, Any]] | None = None

    async def list_tools(self) -> list[Any]:
        """Every tool, its schemas compacted (tools/present.py: compact_tool_schemas); done once per tool."""
        self._listed = self._listed or {}
        tools = []
        for tool in await super().list_tools():
            key = id(tool.input_schema)
            if key not in self._listed:
                self._listed[key] = (tool.input_schema, compact_tool_schemas(tool.input_schema, tool.output_schema))
            input_schema, output_schema = self._listed[key][1]
            tools.append(tool.model_copy(update={"input_schema": input_schema, "output_schema": output_schema,
                                                 "annotations": compact_annotations(tool.annotations)}))
        return tools

    async def call_tool(self, name: str, arguments: dict[str, Any], context: Context | None = None) -> Any:
        known = {tool.name: tool for tool in await self.list_tools()}
        tool = known.get(name)
        if tool is not None:
            allowed = set(tool.input_schema.get("properties", {}))
            unknown = sorted(set(arguments) - allowed)
            if unknown:
                raise ToolError(
                    f"Error executing tool {name}: unknown parameter(s) {', '.join(unknown)}; allowed: {', '.join(sorted(allowed))}"
                )
        try:
            return await super().call_tool(name, arguments, context)
        except ToolError as exc:
            if isinstance(exc.__cause__, ValidationError):
                raise ToolError(f"Error executing tool {name}: {one_line_error(exc.__cause__)}") from exc.__cause__
            raise

    async def list_resources(self) -> list[Any]:
        """The fixed resources plus the newest outputs (tools/resources.py), so hosts can browse what was made."""
        listed = await super().list_resources()
        app = self.app_context
        return listed + (resources.recent_outputs(app.store) if app is not None else [])

    async def get_prompt(self, name: str, arguments: dict[str, Any] | None = None, context: Context | None = None) -> Any:
        # Unknown prompt or missing argument: invalid params naming what is allowed (tools/prompts.py), not code 0.
        await prompts.check_prompt_request(self, name, arguments)
        return await super().get_prompt(name, arguments, context)


def build_server(settings: Settings, engine: Engine | None = None, *, base_url: str = "http://127.0.0.1:8765") -> ImgToolsServer:
    """The server for one configuration; `engine` may be passed in by tests that share one across servers.

    `base_url` is where it is served over HTTP; with IMGTOOLS_AUTH_TOKEN set, /mcp requires that bearer token there.
    """

    @asynccontextmanager
    async def lifespan(_: MCPServer[AppContext]) -> AsyncIterator[AppContext]:
        store = OutputStore(settings.output_dir)
        own_engine = engine is None
        app = AppContext(
            settings=settings,
            engine=engine or build_engine(settings),  # IMGTOOLS_ENGINE: local or ray
            store=store,
            resolver=ImageResolver(
                store.lookup,
                settings.allowed_input_roots,
                max_bytes=settings.max_input_bytes,
                max_pixels=settings.max_pixels * 4,
                url_policy=UrlPolicy(settings.allow_private_urls),
            ),
            tasks=TaskManager(settings.output_dir / "jobs"),
            vlm=build_vlm(settings),
        )
        async with anyio.create_task_group() as task_group:
            app.tasks.bind(task_group, admit=app.engine.admit)
            server.app_context = app
            warm_up = getattr(app.engine, "warm_up", None)  # IMGTOOLS_WARMUP (engine/warmup.py); the local engine only
            if warm_up is not None:
                task_group.start_soon(warm_up)
            try:
                yield app
            finally:
                server.app_context = None
                task_group.cancel_scope.cancel()
                await app.vlm.aclose()
                if own_engine:
                    await app.engine.aclose()

    server = ImgToolsServer(
        "imgtools-mcp",
        title="imgtools",
        version=__version__,
        instructions=INSTRUCTIONS,
        lifespan=lifespan,
        token_verifier=StaticTokenVerifier(settings.auth_token) if settings.auth_token else None,
        auth=auth_settings(base_url) if settings.auth_token else None,
        # The MCP Apps viewer (ui/viewer.py): its page and app-only tool, kept out of plain clients' lists.
        extensions=[ViewerApp()],
        middleware=[hide_app_only_for_plain_clients],
    )
    for family in TOOL_FAMILIES:
        family.register(server)
    return server
