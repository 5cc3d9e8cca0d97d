"""What every tool module shares on the MCP side: registering a request model as a tool, mapping errors to
one-line tool errors, progress, starting a run in the call or as a background task, and image results."""

from __future__ import annotations

import base64
import inspect
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, TypeVar

import anyio.to_thread
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp_types import CallToolResult, ImageContent, ResourceLink, TextContent, ToolAnnotations
from pydantic import BaseModel, Field, SkipValidation, ValidationError

from ..app import AppContext
from ..engine.errors import EngineError
from ..images.refs import ImageRefError
from ..images.thumbs import make_thumbnails
from ..params import GenerationParams, GenerationResult, one_line_error
from ..runs.context import ResolveOnce, Resolver, RunContext, RunFailed, RunInputError, StopSwitch
from ..runs.image_run import ImageRun, run_image, summary_line
from ..runs.prepare import preparation_of, references_of
from ..runs.progress import ProgressSink
from ..runs.vlm_messages import vlm_error_message
from ..store import StoredImage, StoreError
from ..ui.viewer import tool_meta
from ..vlm.errors import MediaError, VLMError

RequestT = TypeVar("RequestT", bound=BaseModel)
ResultT = TypeVar("ResultT")
Handler = Callable[[RequestT, Context], Awaitable[Any]]


def app_of(ctx: Context) -> AppContext:
    return ctx.request_context.lifespan_context


def bind_tool(
    server: MCPServer,
    request_model: type[RequestT],
    handler: Handler,
    *,
    name: str,
    title: str,
    description: str,
    annotations: ToolAnnotations,
    output_model: type[BaseModel] | None = GenerationResult,
) -> None:
    """Register `handler(request, ctx)` as a tool whose parameters are the request model's fields.

    The model is the single source of the input schema (descriptions, ranges, defaults) and is
    validated here once, so a bad argument becomes a one-line tool error naming the parameter.
    """
    parameters = []
    annotations_map: dict[str, Any] = {}
    for field_name, info in request_model.model_fields.items():
        annotation = Annotated[(info.annotation, *info.metadata, Field(description=info.description, discriminator=info.discriminator))]
        if info.discriminator:
            # A tagged union (sweep's base) is published as such, but its tag may come from a sibling field,
            # which only the request model's own validation below fills in.
            annotation = Annotated[annotation, SkipValidation]
        if info.is_required():
            default = inspect.Parameter.empty
        else:
            default = info.get_default(call_default_factory=True)
        parameters.append(inspect.Parameter(field_name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=annotation))
        annotations_map[field_name] = annotation
    parameters.append(inspect.Parameter("ctx", inspect.Parameter.KEYWORD_ONLY, annotation=Context))
    annotations_map["ctx"] = Context
    returns: Any = Annotated[CallToolResult, output_model] if output_model is not None else CallToolResult
    annotations_map["return"] = returns

    async def tool(ctx: Context, **arguments: Any) -> Any:
        try:
            request = request_model.model_validate(arguments)
        except ValidationError as exc:
            raise ToolError(one_line_error(exc)) from None
        with tool_errors():
            return await handler(request, ctx)

    tool.__name__ = name
    tool.__signature__ = inspect.Signature(parameters, return_annotation=returns)  # type: ignore[attr-defined]
    tool.__annotations__ = annotations_map
    # meta: the MCP Apps viewer binding for image tools (ui/viewer.py); None for the rest.
    server.add_tool(tool, name=name, title=title, description=description, annotations=annotations, meta=tool_meta(name))


class tool_errors:
    """Turn the failures a caller can act on into one-line tool errors; anything else stays a crash (logged)."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> bool:
        if exc is None or isinstance(exc, ToolError):
            return False
        if isinstance(exc, EngineError | ImageRefError | StoreError | MediaError | RunInputError | RunFailed):
            raise ToolError(str(exc)) from exc
        if isinstance(exc, VLMError):
            raise ToolError(vlm_error_message(exc)) from exc
        if isinstance(exc, ValidationError):
            raise ToolError(one_line_error(exc)) from exc
        return False


def progress_sink(ctx: Context) -> ProgressSink:
    async def report(progress: float, total: float | None, message: str | None) -> None:
        await ctx.report_progress(progress, total, message)

    return report


async def run_here_or_as_task(
    ctx: Context,
    tool: str,
    background: bool,
    run: Callable[[RunContext], Awaitable[ResultT]],
    present: Callable[[ResultT], Awaitable[CallToolResult]],
    started: Callable[[str], CallToolResult],
    *,
    stoppable: bool = False,
    resolver: Resolver | None = None,
) -> CallToolResult:
    """Run within this call (progress to the client), or as a background task: then `started(task_id)` is the
    call's answer and get_job later returns what `present` made of the run's result.

    `stoppable` runs wind down on cancel_job and keep what they made (a sweep's cells, refine's best) instead
    of being cancelled outright.
    """
    app = app_of(ctx)
    if not background:
        return await present(await run(app.run_context(progress_sink(ctx), resolver=resolver)))
    stop = StopSwitch()

    async def body(sink: ProgressSink, ticket: Any) -> dict[str, Any]:
        result = await present(await run(app.run_context(sink, stop=stop, ticket=ticket, resolver=resolver)))
        return result.model_dump(mode="json", by_alias=True, exclude_none=True)

    record = app.tasks.start(tool, body, stop=stop if stoppable else None)
    return started(record.id)


def resource_link(stored: StoredImage, label: str | None = None) -> ResourceLink:
    size = f"{stored.width}x{stored.height} PNG"
    return ResourceLink(
        type="resource_link",
        uri=stored.uri,
        name=stored.id,
        title=f"{label} ({size})" if label else size,
        mime_type="image/png",
        size=stored.path.stat().st_size,
    )


async def image_blocks(stored: list[StoredImage], pil_images: list[Any]) -> list[Any]:
    """Per image: a thumbnail ImageContent and a ResourceLink to the full PNG (thumbnails encoded off the loop)."""
    thumbs = await anyio.to_thread.run_sync(make_thumbnails, pil_images)
    blocks: list[Any] = []
    for item, (data, mime) in zip(stored, thumbs, strict=True):
        blocks.append(ImageContent(type="image", data=base64.b64encode(data).decode(), mime_type=mime))
        blocks.append(resource_link(item))
    return blocks


def result_of(text: str, blocks: list[Any], structured: BaseModel) -> CallToolResult:
    return CallToolResult(
        content=[TextContent(type="text", text=text), *blocks],
        structured_content=structured.model_dump(mode="json"),
    )


def started_result(tool: str, task_id: str, structured: BaseModel, detail: str = "") -> CallToolResult:
    """The answer of a call started with background=true: the job id and where to follow it."""
    text = f"{tool}: started job {task_id}{detail}; poll get_job for progress and the result"
    return result_of(text, [], structured)


async def run_image_tool(ctx: Context, request: GenerationParams) -> CallToolResult:
    """generate, edit or inpaint: within the call, or as a background task whose id comes back before the model
    is resolved or downloaded (which may take minutes). Bad image references still fail the call itself."""
    tool, prepare = preparation_of(request)
    resolver = ResolveOnce(app_of(ctx).resolver)
    if request.background:
        for ref, param, mode in references_of(request):
            await resolver.resolve(ref, param=param, mode=mode)

    async def run(run_ctx: RunContext) -> ImageRun:
        return await run_image(run_ctx, tool, request, prepare)

    async def present(made: ImageRun) -> CallToolResult:
        from ..runs.structure import made_outputs  # control maps and mask_prompt's mask, linked for the assistant

        links = [resource_link(stored, label) for stored, label in made_outputs(app_of(ctx).store, made.result.parameters)]
        blocks = [*await image_blocks(made.stored, made.images), *links]
        return result_of(summary_line(tool, made.result), blocks, made.result)

    def started(task_id: str) -> CallToolResult:
        return started_result(tool, task_id, GenerationResult(job_id=task_id))

    return await run_here_or_as_task(ctx, tool, request.background, run, present, started, resolver=resolver)


def bind_image_tool(server: MCPServer, request_model: type[GenerationParams], *, name: str, title: str, description: str) -> None:
    """Register generate, edit or inpaint: the request model is the schema, `run_image_tool` the handler. Each makes
    new outputs (never read-only, idempotent or destructive) and may fetch http(s) images (open-world)."""

    async def handle(request: GenerationParams, ctx: Context) -> CallToolResult:
        return await run_image_tool(ctx, request)

    annotations = ToolAnnotations(
        title=title, read_only_hint=False, destructive_hint=False, idempotent_hint=False, open_world_hint=True
    )
    bind_tool(server, request_model, handle, name=name, title=title, description=description, annotations=annotations)
