"""The VLM tools that look without making anything: `describe_image` and `describe_video` (`critique` is beside them)."""

from __future__ import annotations

from typing import Any

import anyio
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp_types import CallToolResult, TextContent, ToolAnnotations
from pydantic import BaseModel, ConfigDict, Field

from ..images.refs import ResolvedImage, shorten_reference
from ..images.video_refs import resolve_video
from ..params import IMAGE_REFERENCE
from ..vlm import MediaError, VLMUsage, probe_video, sample_frames
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
        description=f"Each an {IMAGE_REFERENCE}",
    )
    question: str | None = Field(
        None, min_length=1, max_length=4000, description="Null: describe in detail"
    )


class DescribeVideoRequest(BaseModel):
    """A video and a question about it, answered from frames the server samples."""

    model_config = ConfigDict(extra="forbid")

    video: str = Field(min_length=1, description="File under the input roots, data: URL/base64 or http(s) URL")
    question: str | None = Field(
        None, min_length=1, max_length=4000, description="Null: describe in detail"
    )
    fps: float | None = Field(
        None, gt=0, le=30,
        description="Frames per second; null: max_frames spread evenly",
    )
    max_frames: int = Field(
        16, ge=1, le=MAX_VIDEO_FRAMES, description="Most frames sent (each costs tokens)"
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


DESCRIBE_IMAGE = """Ask the vision-language model about images: a detailed description, or an answer to `question`
(compare them, read text, spot defects). Cost: one VLM call, about 1-2k tokens per image."""

DESCRIBE_VIDEO = """Ask the vision-language model about a video (mp4, webm, mov, mkv, gif, ...; inline or downloaded up
to 100 MB): sampled frames are labelled with their times, so the answer can cite them."""

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
