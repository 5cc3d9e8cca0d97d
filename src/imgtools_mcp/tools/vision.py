"""The VLM tools that look without making anything: `describe_image`, `describe_video` and `critique`."""

from __future__ import annotations

from typing import Any, Literal

import anyio
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp_types import CallToolResult, TextContent, ToolAnnotations
from pydantic import BaseModel, ConfigDict, Field

from ..app import AppContext
from ..images.refs import ResolvedImage, shorten_reference
from ..images.video_refs import VIDEO_FORMS, resolve_video
from ..params import IMAGE_REFERENCE
from ..vlm import Critique, MediaError, VLMUsage, probe_video, sample_frames
from ..vlm.media import DEFAULT_VIDEO_MAX_BYTES
from .present import app_of, bind_tool
from .vision_common import require_vlm, usage_text, wait_progress

MAX_DESCRIBE_IMAGES = 8
MAX_VIDEO_FRAMES = 64
# Inline (data URL, base64) and downloaded videos travel through memory; files are opened in place.
VIDEO_DOWNLOAD_MAX_BYTES = 100 * 1024 * 1024

VLM_ANNOTATIONS = dict(read_only_hint=True, destructive_hint=False, idempotent_hint=False, open_world_hint=True)


# ----- requests -----


class DescribeImageRequest(BaseModel):
    """One or more images and a question about them."""

    model_config = ConfigDict(extra="forbid")

    images: list[str] = Field(
        min_length=1,
        max_length=MAX_DESCRIBE_IMAGES,
        description=f"1-{MAX_DESCRIBE_IMAGES} images, each {IMAGE_REFERENCE}; several are compared as image 1, image 2, ...",
    )
    question: str | None = Field(
        None, min_length=1, max_length=4000, description="What to ask about the image(s); default: a detailed description"
    )


class DescribeVideoRequest(BaseModel):
    """A video and a question about it, answered from frames the server samples."""

    model_config = ConfigDict(extra="forbid")

    video: str = Field(min_length=1, description=f"The video: {VIDEO_FORMS}")
    question: str | None = Field(
        None, min_length=1, max_length=4000, description="What to ask about the video; default: a detailed description"
    )
    fps: float | None = Field(
        None, gt=0, le=30,
        description="Frames per second to sample from t=0 (1 = one frame a second); if that would exceed max_frames, "
        "or when omitted, max_frames frames are spread evenly over the whole video",
    )
    max_frames: int = Field(
        16, ge=1, le=MAX_VIDEO_FRAMES, description=f"Most frames the VLM sees (1-{MAX_VIDEO_FRAMES}); more frames cost more tokens"
    )


class CritiqueRequest(BaseModel):
    """An image and the goal it was made for."""

    model_config = ConfigDict(extra="forbid")

    image: str = Field(min_length=1, description=f"The image to judge: {IMAGE_REFERENCE}")
    goal: str = Field(min_length=1, max_length=4000, description="What the image should show: the brief it is judged against")
    parameters: dict[str, Any] | None = Field(
        None,
        description="Generation parameters it was made with (prompt, steps, guidance_scale, sampler, ...), so the advice "
        "can refer to them; default for an output id: the parameters in its sidecar",
    )


# ----- results -----


class InputImage(BaseModel):
    reference: str
    width: int
    height: int
    output_id: str | None = None


class DescribeResult(BaseModel):
    """describe_image's structured result."""

    text: str
    model: str = Field(description="The VLM that answered")
    usage: VLMUsage = Field(description="Tokens (and cost in USD when the provider reports it)")
    images: list[InputImage]


class VideoInfoResult(BaseModel):
    reference: str
    duration_s: float
    width: int
    height: int
    fps: float | None
    codec: str


class SampledFrameInfo(BaseModel):
    timestamp_s: float
    width: int
    height: int


class DescribeVideoResult(BaseModel):
    """describe_video's structured result."""

    text: str
    model: str = Field(description="The VLM that answered")
    usage: VLMUsage = Field(description="Tokens (and cost in USD when the provider reports it)")
    video: VideoInfoResult
    frames: list[SampledFrameInfo] = Field(description="The frames the VLM saw, with their times in the video")


class CritiqueResultOut(BaseModel):
    """critique's structured result."""

    critique: Critique
    model: str = Field(description="The VLM that answered")
    usage: VLMUsage = Field(description="Tokens (and cost in USD when the provider reports it)")
    image: InputImage
    goal: str
    parameters: dict[str, Any] | None = Field(None, description="The generation parameters the critic was shown")
    parameters_source: Literal["request", "sidecar", "none"]


# ----- handlers -----


def input_image(resolved: ResolvedImage) -> InputImage:
    return InputImage(
        reference=shorten_reference(resolved.reference, limit=160),
        width=resolved.image.width,
        height=resolved.image.height,
        output_id=resolved.output_id,
    )


async def describe_image(request: DescribeImageRequest, ctx: Context) -> CallToolResult:
    app = app_of(ctx)
    vlm = require_vlm(app)
    resolved = [await app.resolver.resolve(ref, param=f"images[{index}]") for index, ref in enumerate(request.images)]
    answer = await vlm.describe([item.image for item in resolved], request.question, on_wait=wait_progress(ctx))
    structured = DescribeResult(text=answer.text, model=answer.model, usage=answer.usage, images=[input_image(r) for r in resolved])
    return CallToolResult(
        content=[TextContent(type="text", text=f"{answer.text}\n\n({answer.model}; {usage_text(answer.usage)})")],
        structured_content=structured.model_dump(mode="json"),
    )


async def describe_video(request: DescribeVideoRequest, ctx: Context) -> CallToolResult:
    app = app_of(ctx)
    vlm = require_vlm(app)
    video = await resolve_video(
        request.video,
        param="video",
        resolver=app.resolver,
        max_file_bytes=DEFAULT_VIDEO_MAX_BYTES,
        max_download_bytes=VIDEO_DOWNLOAD_MAX_BYTES,
    )

    def decode() -> tuple[Any, list[Any]]:
        info = probe_video(video.source, max_bytes=DEFAULT_VIDEO_MAX_BYTES)
        frames = sample_frames(video.source, fps=request.fps, max_frames=request.max_frames, max_bytes=DEFAULT_VIDEO_MAX_BYTES)
        return info, frames

    try:
        info, frames = await anyio.to_thread.run_sync(decode)
    except MediaError as exc:
        raise ToolError(f"video: {exc}") from exc
    answer = await vlm.describe_frames(
        [(frame.timestamp_s, frame.image) for frame in frames], request.question, duration_s=info.duration_s,
        on_wait=wait_progress(ctx),
    )
    structured = DescribeVideoResult(
        text=answer.text,
        model=answer.model,
        usage=answer.usage,
        video=VideoInfoResult(reference=video.reference, **info._asdict()),
        frames=[
            SampledFrameInfo(timestamp_s=round(frame.timestamp_s, 4), width=frame.image.width, height=frame.image.height)
            for frame in frames
        ],
    )
    times = ", ".join(f"{frame.timestamp_s:.2f}" for frame in frames)
    footer = f"({len(frames)} frames at t = {times} s of {info.duration_s:.1f} s; {answer.model}; {usage_text(answer.usage)})"
    return CallToolResult(
        content=[TextContent(type="text", text=f"{answer.text}\n\n{footer}")],
        structured_content=structured.model_dump(mode="json"),
    )


async def critique(request: CritiqueRequest, ctx: Context) -> CallToolResult:
    app = app_of(ctx)
    vlm = require_vlm(app)
    resolved = await app.resolver.resolve(request.image, param="image")
    parameters, source = request.parameters, "request"
    if parameters is None and resolved.output_id is not None:
        parameters, source = sidecar_parameters(app, resolved.output_id), "sidecar"
    if parameters is None:
        source = "none"
    result = await vlm.critique(resolved.image, request.goal, parameters, on_wait=wait_progress(ctx))
    structured = CritiqueResultOut(
        critique=result.critique,
        model=result.model,
        usage=result.usage,
        image=input_image(resolved),
        goal=request.goal,
        parameters=parameters,
        parameters_source=source,
    )
    return CallToolResult(
        content=[TextContent(type="text", text=critique_text(result.critique) + f" ({result.model}; {usage_text(result.usage)})")],
        structured_content=structured.model_dump(mode="json"),
    )


def sidecar_parameters(app: AppContext, output_id: str) -> dict[str, Any] | None:
    """The parameters an output was made with, as its sidecar records them (None when it has none)."""
    try:
        metadata = app.store.read_metadata(output_id)
    except (KeyError, OSError, ValueError):
        return None
    parameters = metadata.get("parameters")
    return parameters if isinstance(parameters, dict) else None


def critique_text(critique: Critique) -> str:
    text = f"score {critique.score:g}/10 (adherence {critique.prompt_adherence:g}, quality {critique.visual_quality:g}): {critique.summary}"
    if critique.problems:
        text += " Problems: " + "; ".join(critique.problems) + "."
    text += f" Revised prompt: {critique.revised_prompt}"
    if critique.negative_prompt_additions:
        text += f" | add to negative: {', '.join(critique.negative_prompt_additions)}"
    advice = {k: v for k, v in critique.parameter_advice.model_dump().items() if v is not None}
    if advice:
        text += " | parameters: " + ", ".join(f"{k}={v}" for k, v in advice.items())
    return text


DESCRIBE_IMAGE = """Ask the vision-language model about one or more images: a detailed description by default, or an
answer to `question` (compare them, read text, spot defects, check a detail). Images are output ids or other references.
Returns the answer as text; structured_content adds the model and token use (and cost when the provider reports it).
Cost: one VLM call, roughly 1-2k tokens per image."""

DESCRIBE_VIDEO = """Ask the vision-language model about a video. The server samples frames (every 1/fps seconds, or
max_frames spread over the whole video), labels each with its timestamp and sends them; the answer can cite times.
Accepts mp4, webm, mov, mkv, gif, ... as a file under the input roots, a data: URL/base64, or an http(s) URL
(inline and downloaded videos up to 100 MB)."""

CRITIQUE = """Judge an image against the goal it was made for, as a strict art director: score 0-10, the visible
problems (most important first), a complete revised prompt, negative-prompt additions and parameter advice, as
structured_content. For an output id the generation parameters are read from its sidecar.
Cost: one VLM call (tokens reported). Use refine to run generate -> critique -> revise rounds automatically."""


def register(server: MCPServer) -> None:
    bind_tool(
        server, DescribeImageRequest, describe_image, name="describe_image", title="Describe image(s)",
        description=DESCRIBE_IMAGE, output_model=DescribeResult,
        annotations=ToolAnnotations(title="Describe image(s)", **VLM_ANNOTATIONS),
    )
    bind_tool(
        server, DescribeVideoRequest, describe_video, name="describe_video", title="Describe video",
        description=DESCRIBE_VIDEO, output_model=DescribeVideoResult,
        annotations=ToolAnnotations(title="Describe video", **VLM_ANNOTATIONS),
    )
    bind_tool(
        server, CritiqueRequest, critique, name="critique", title="Critique image",
        description=CRITIQUE, output_model=CritiqueResultOut,
        annotations=ToolAnnotations(title="Critique image", **VLM_ANNOTATIONS),
    )
