"""The `upscale` tool: enlarge an image 2x/4x with an upscaler model (spandrel) or Lanczos, plus an optional detail pass."""

from __future__ import annotations

import time
from typing import Any, Literal

import anyio
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp_types import CallToolResult, ToolAnnotations
from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic_core import PydanticCustomError

from .. import __version__
from ..engine.errors import InvalidRequestError
from ..engine.upscale import DetailPass, UpscaleOutcome, resolve_upscaler, upscale_on_engine
from ..infotext import format_infotext
from ..params import MAX_SEED, GenerationResult, ImageInfo
from ..runs.inputs import InputRecord
from ..runs.progress import ProgressRelay
from .present import app_of, bind_tool, image_blocks, progress_sink, result_of

DESCRIPTION = """Enlarge an image 2x or 4x: with `model` (Real-ESRGAN, 4x-UltraSharp, ...) it invents detail, else
Lanczos. denoise > 0 adds a diffusion detail pass with `prompt` (0.2-0.35 sharpens, 0.5+ changes content). Tiled, so
any size fits. Returns a thumbnail and an imgtools://images/<id> link."""


class UpscaleRequest(BaseModel):
    """Image to a 2x/4x larger image."""

    model_config = ConfigDict(extra="forbid")

    image: str = Field(min_length=1, description="Output id, path, data: URL or http(s) URL")
    scale: Literal[2, 4] = Field(2, description="2 or 4")
    model: str | None = Field(None, min_length=1, description="Upscaler in IMGTOOLS_UPSCALER_DIRS, path or hub id; null: Lanczos")
    tile: int = Field(256, ge=32, le=2048, description="Upscaler tile, input px")
    overlap: int = Field(16, ge=0, le=256, description="Px tiles share")
    denoise: float = Field(0.0, ge=0.0, le=1.0, description="Detail pass strength; 0 none")
    prompt: str = Field("", max_length=4000, description="Detail pass prompt")
    detail_model: str | None = Field(None, min_length=1, description="Detail pass model; null: the server's")
    steps: int | None = Field(None, ge=1, le=150, description="Detail pass steps")
    seed: int | None = Field(None, ge=-1, le=MAX_SEED, description="Detail pass seed")
    detail_tile: int | None = Field(None, ge=64, le=2048, multiple_of=8, description="Detail pass tile; null: model size")

    @model_validator(mode="after")
    def _overlap_below_tile(self) -> "UpscaleRequest":
        if self.overlap >= self.tile:
            raise PydanticCustomError(
                "overlap_tile", "overlap must be smaller than tile (got overlap {overlap}, tile {tile})",
                {"overlap": self.overlap, "tile": self.tile},
            )
        return self


class UpscaledImage(ImageInfo):
    seed: int | None = Field(None, description="The detail pass's seed; null when no diffusion ran")  # type: ignore[assignment]


class UpscaleResult(GenerationResult):
    images: list[UpscaledImage] = Field(default_factory=list)  # type: ignore[assignment]
    upscaler: dict[str, Any] = Field(default_factory=dict, description="What enlarged the image: model and architecture, or Lanczos")
    detail: dict[str, Any] | None = Field(None, description="The detail pass as it ran (model, steps, denoise, seed, tiles)")


def infotext_fields(request: UpscaleRequest, outcome: UpscaleOutcome, record: InputRecord) -> dict[str, Any]:
    """A1111/SD.Next names: 'Postprocess upscale by/upscaler' for the enlargement, 'SD upscale ...' for the detail pass."""
    detail = outcome.detail or {}
    fields: dict[str, Any] = {
        "Steps": detail.get("steps"),
        "Sampler": detail.get("sampler"),
        "CFG scale": detail.get("guidance_scale"),
        "Seed": detail.get("seed"),
        "Size": f"{outcome.image.width}x{outcome.image.height}",
        "Model": (outcome.model or {}).get("name"),
        "Denoising strength": detail.get("denoise"),
        "SD upscale overlap": detail.get("overlap"),
        "SD upscale upscaler": outcome.upscaler["name"] if detail else None,
        "Postprocess upscale by": request.scale,
        "Postprocess upscaler": outcome.upscaler["name"],
        **record.infotext(),
        "Version": f"imgtools-mcp {__version__}",
    }
    return fields


async def handle(request: UpscaleRequest, ctx: Context) -> CallToolResult:
    app = app_of(ctx)
    started = time.perf_counter()
    resolved = await app.resolver.resolve(request.image, param="image")
    record = InputRecord.of(resolved)
    width, height = resolved.image.size
    out_pixels = width * height * request.scale**2
    limit = app.settings.max_pixels * 4
    if out_pixels > limit:
        raise ToolError(
            f"scale: {request.scale}x of {width}x{height} is {width * request.scale}x{height * request.scale} = {out_pixels} pixels, "
            f"over the {limit} pixel limit (4 x IMGTOOLS_MAX_PIXELS); upscale a smaller image or by 2"
        )
    source = None
    if request.model is not None:
        source = await anyio.to_thread.run_sync(
            lambda: resolve_upscaler(request.model or "", dirs=app.settings.upscaler_dirs, offline=app.engine.offline)
        )
    detail = None
    if request.denoise > 0:
        from ..runs.image_run import pick_seed

        detail = DetailPass(
            denoise=request.denoise,
            prompt=request.prompt,
            seed=pick_seed(request.seed),
            model=request.detail_model or app.settings.model,
            steps=request.steps,
            tile=request.detail_tile,
        )
    relay = ProgressRelay(progress_sink(ctx))

    def on_tile(index: int, total: int) -> None:
        # One bar over the detail pass: tile i fills [i, i+1) whatever steps it runs.
        relay.grand_total = float(total)
        relay.segment(index, 1.0, f"detail tile {index + 1} / {total}: ")

    try:
        async with relay.running():
            outcome = await upscale_on_engine(
                app.engine,
                resolved.image,
                request.scale,
                upscaler=source,
                tile=request.tile,
                overlap=request.overlap,
                detail=detail,
                on_step=relay.on_step,
                on_tile=on_tile,
            )
    except InvalidRequestError as exc:
        # The detail pass is img2img underneath; name the parameter the caller gave.
        if exc.param == "strength":
            raise ToolError(str(exc).replace("strength", "denoise", 1)) from exc
        raise ToolError(f"detail pass: {exc}") from exc

    parameters: dict[str, Any] = {
        "image": record.reference,
        "scale": request.scale,
        "model": request.model,
        "tile": request.tile,
        "overlap": request.overlap,
        "denoise": request.denoise,
    }
    if outcome.detail is not None:
        parameters.update(
            prompt=request.prompt,
            detail_model=outcome.detail["model"],
            steps=outcome.detail["steps"],
            guidance_scale=outcome.detail["guidance_scale"],
            sampler=outcome.detail["sampler"],
            seed=outcome.detail["seed"],
            detail_tile=outcome.detail["tile"],
            detail_overlap=outcome.detail["overlap"],
        )
    infotext = format_infotext(request.prompt, "", infotext_fields(request, outcome, record))
    metadata = {
        "tool": "upscale",
        "seed": (outcome.detail or {}).get("seed"),
        "parameters": parameters,
        "upscaler": outcome.upscaler,
        "detail": outcome.detail,
        "model": outcome.model,
        "engine": outcome.engine,
        **record.metadata(),
    }
    saved_at = time.perf_counter()
    stored = await anyio.to_thread.run_sync(lambda: app.store.save(outcome.image, infotext, metadata))
    timings = {
        **outcome.timings,
        "save_s": round(time.perf_counter() - saved_at, 4),
        "total_s": round(time.perf_counter() - started, 4),
    }
    seed = (outcome.detail or {}).get("seed")
    result = UpscaleResult(
        images=[
            UpscaledImage(
                id=stored.id, uri=stored.uri, metadata_uri=stored.metadata_uri, path=str(stored.path),
                width=stored.width, height=stored.height, seed=seed,
            )
        ],
        parameters=parameters,
        model=outcome.model or {},
        engine=outcome.engine,
        timings=timings,
        warnings=outcome.notes,
        upscaler=outcome.upscaler,
        detail=outcome.detail,
    )
    how = outcome.upscaler["name"] + (f" + detail pass over {outcome.detail['tiles']} tile(s)" if outcome.detail else "")
    text = (
        f"upscale: {width}x{height} -> {stored.width}x{stored.height} [{stored.id}] with {how}, "
        f"{timings['total_s']:.1f} s"
    )
    if outcome.notes:
        text += " — " + "; ".join(outcome.notes)
    return result_of(text, await image_blocks([stored], [outcome.image]), result)


def register(server: MCPServer) -> None:
    bind_tool(
        server,
        UpscaleRequest,
        handle,
        name="upscale",
        title="Upscale image",
        description=DESCRIPTION,
        annotations=ToolAnnotations(
            title="Upscale image", read_only_hint=False, destructive_hint=False, idempotent_hint=False, open_world_hint=True
        ),
        output_model=UpscaleResult,
    )
