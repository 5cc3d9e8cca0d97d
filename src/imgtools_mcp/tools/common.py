"""What every tool module shares: binding a request model to a tool, error mapping, progress, image results."""

from __future__ import annotations

import base64
import inspect
import logging
from collections.abc import Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Annotated, Any, AsyncIterator, TypeVar

import anyio
import anyio.from_thread
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp_types import CallToolResult, ImageContent, ResourceLink, TextContent, ToolAnnotations
from pydantic import BaseModel, Field, ValidationError

from ..app import AppContext
from ..engine.errors import EngineError
from ..images.refs import ImageRefError
from ..images.thumbs import make_thumbnails
from ..jobs import ProgressSink, StopSwitch
from ..params import GenerationResult, one_line_error
from ..store import StoredImage, StoreError
from ..vlm.errors import MediaError, VLMError
from .vision_common import vlm_error_message

log = logging.getLogger(__name__)
RequestT = TypeVar("RequestT", bound=BaseModel)
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
        annotation = Annotated[(info.annotation, *info.metadata, Field(description=info.description))]
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
    server.add_tool(tool, name=name, title=title, description=description, annotations=annotations)


class tool_errors:
    """Turn the failures a caller can act on into one-line tool errors; anything else stays a crash (logged)."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> bool:
        if exc is None or isinstance(exc, ToolError):
            return False
        if isinstance(exc, EngineError | ImageRefError | StoreError | MediaError):
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


async def run_here_or_as_job(
    app: AppContext,
    ctx: Context,
    kind: str,
    background: bool,
    run: Callable[[ProgressSink | None, StopSwitch], Awaitable[CallToolResult]],
    started: Callable[[str], CallToolResult],
) -> CallToolResult:
    """Run a long, stoppable tool (sweep, refine) within this call, or as a background job: then `started(job_id)`
    is the call's answer and get_job later returns what `run` returned."""
    stop = StopSwitch()
    if not background:
        return await run(progress_sink(ctx), stop)

    async def body(sink: ProgressSink) -> dict[str, Any]:
        return call_result_to_dict(await run(sink, stop))

    record = app.jobs.start(kind, body, stop=stop)
    return started(record.id)


class StepRelay:
    """Carries per-step progress from the denoising thread to an async sink, in order, without blocking the thread.

    `offset`/`grand_total` let several denoising runs (images, sweep cells, refine rounds) report
    one continuous progress bar.
    """

    def __init__(self, sink: ProgressSink | None, grand_total: float | None = None) -> None:
        self.sink = sink
        self.grand_total = grand_total
        self.offset = 0.0
        self.prefix = ""
        self._send, self._receive = anyio.create_memory_object_stream[tuple[float, float | None, str]](max_buffer_size=1024)

    def on_step(self, step: int, total: int) -> None:
        """Called in the worker thread after each step."""
        overall_total = self.grand_total if self.grand_total is not None else float(total)
        message = f"{self.prefix}step {step} / {total}"
        try:
            anyio.from_thread.run_sync(self._send.send_nowait, (self.offset + step, overall_total, message))
        except (anyio.WouldBlock, anyio.BrokenResourceError, anyio.ClosedResourceError):
            pass  # progress is advisory; a slow or gone client must not stall denoising

    def post(self, progress: float, message: str) -> None:
        """Report progress from the event loop (between runs), queued in order behind the steps already sent."""
        try:
            self._send.send_nowait((progress, self.grand_total, message))
        except (anyio.WouldBlock, anyio.BrokenResourceError, anyio.ClosedResourceError):
            pass

    async def _pump(self) -> None:
        async with self._receive:
            async for progress, total, message in self._receive:
                if self.sink is not None:
                    try:
                        await self.sink(progress, total, message)
                    except Exception as exc:  # the client may have gone; the work goes on
                        log.debug("progress not delivered: %s", exc)

    @asynccontextmanager
    async def running(self) -> AsyncIterator["StepRelay"]:
        try:
            async with anyio.create_task_group() as task_group:
                task_group.start_soon(self._pump)
                try:
                    yield self
                finally:
                    # Closing the sender lets the pump drain every queued step before the result is returned.
                    self._send.close()
        except BaseExceptionGroup as group:
            # The pump never raises, so a lone error is the work's own (an EngineError, say): raise it as itself
            # so tool_errors can turn it into a one-line tool error instead of a generic failure.
            if len(group.exceptions) == 1:
                raise group.exceptions[0]
            raise


def image_blocks(stored: list[StoredImage], pil_images: list[Any]) -> list[Any]:
    """Per image: a thumbnail ImageContent and a ResourceLink to the full PNG."""
    blocks: list[Any] = []
    thumbs = make_thumbnails(pil_images)
    for item, (data, mime) in zip(stored, thumbs, strict=True):
        blocks.append(ImageContent(type="image", data=base64.b64encode(data).decode(), mime_type=mime))
        blocks.append(
            ResourceLink(
                type="resource_link",
                uri=item.uri,
                name=item.id,
                title=f"{item.width}x{item.height} PNG",
                mime_type="image/png",
                size=item.path.stat().st_size,
            )
        )
    return blocks


def result_of(text: str, blocks: list[Any], structured: BaseModel) -> CallToolResult:
    return CallToolResult(
        content=[TextContent(type="text", text=text), *blocks],
        structured_content=structured.model_dump(mode="json"),
    )


def call_result_to_dict(result: CallToolResult) -> dict[str, Any]:
    return result.model_dump(mode="json", by_alias=True, exclude_none=True)
