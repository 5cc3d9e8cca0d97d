"""Images and videos in the form a VLM accepts: data URLs within a pixel budget, timestamped video frames."""

from __future__ import annotations

import base64
import io
import math
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Literal, NamedTuple

import av
from PIL import Image, ImageOps

from .errors import MediaError

DEFAULT_IMAGE_MAX_PIXELS = 1024 * 1024
DEFAULT_VIDEO_MAX_FRAMES = 16
VIDEO_MAX_FRAMES_LIMIT = 256
DEFAULT_VIDEO_MAX_DURATION_S = 600.0
# All sampled frames together: 16 frames of about 512x512. Video tokens add up fast otherwise.
DEFAULT_VIDEO_PIXEL_BUDGET = 16 * 512 * 512
DEFAULT_VIDEO_MAX_BYTES = 512 * 1024 * 1024
# Beyond this gap to the next wanted frame, seeking to the keyframe before it beats decoding forward.
SEEK_GAP_S = 5.0

ImageFormat = Literal["auto", "jpeg", "png"]


class SampledFrame(NamedTuple):
    """One video frame and its presentation time in seconds from the start of the video."""

    timestamp_s: float
    image: Image.Image


class VideoInfo(NamedTuple):
    """What a video is, before any frame is decoded."""

    duration_s: float
    width: int
    height: int
    fps: float | None
    codec: str


def fit_pixels(image: Image.Image, max_pixels: int) -> Image.Image:
    """Downscale (never upscale) keeping the aspect ratio so that width * height <= max_pixels."""
    if max_pixels < 1:
        raise ValueError(f"max_pixels must be >= 1, got {max_pixels}")
    width, height = image.size
    if width * height <= max_pixels:
        return image
    scale = math.sqrt(max_pixels / (width * height))
    new_width, new_height = max(1, int(width * scale)), max(1, int(height * scale))
    # Float rounding can land one pixel over the budget; trim the longer side until it fits.
    while new_width * new_height > max_pixels:
        if new_width >= new_height:
            new_width -= 1
        else:
            new_height -= 1
    return image.resize((new_width, new_height), Image.Resampling.LANCZOS)


def image_to_data_url(
    image: Image.Image,
    *,
    max_pixels: int = DEFAULT_IMAGE_MAX_PIXELS,
    image_format: ImageFormat = "auto",
    jpeg_quality: int = 90,
) -> str:
    """Encode an image as a `data:` URL for an `image_url` content part, resized to `max_pixels`.

    `auto` sends PNG when the image has transparency (JPEG would flatten it) and JPEG otherwise,
    which is several times smaller for photographs and generated images.
    """
    if image_format not in ("auto", "jpeg", "png"):
        raise ValueError(f"image_format must be 'auto', 'jpeg' or 'png', got {image_format!r}")
    # What the VLM sees should match what a person sees, and phone photos rely on EXIF rotation.
    image = fit_pixels(ImageOps.exif_transpose(image), max_pixels)
    has_alpha = image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info)
    fmt = image_format if image_format != "auto" else ("png" if has_alpha else "jpeg")
    buffer = io.BytesIO()
    if fmt == "png":
        image.convert("RGBA" if has_alpha else "RGB").save(buffer, format="PNG")
    else:
        if has_alpha:
            background = Image.new("RGB", image.size, (255, 255, 255))
            background.paste(image.convert("RGBA"), mask=image.convert("RGBA").getchannel("A"))
            image = background
        image.convert("RGB").save(buffer, format="JPEG", quality=jpeg_quality)
    return f"data:image/{fmt};base64,{base64.b64encode(buffer.getvalue()).decode('ascii')}"


def sample_times(duration_s: float, fps: float | None, max_frames: int) -> list[float]:
    """Times (s) to sample: every 1/fps from 0, or, when fps is None or would exceed max_frames,
    max_frames times at the centres of equal slices, so the whole video is covered."""
    if fps is not None:
        count = max(1, math.ceil(duration_s * fps - 1e-9))
        if count <= max_frames:
            return [k / fps for k in range(count)]
    return [(i + 0.5) * duration_s / max_frames for i in range(max_frames)]


def sample_frames(
    source: str | os.PathLike[str] | bytes,
    *,
    fps: float | None = None,
    max_frames: int = DEFAULT_VIDEO_MAX_FRAMES,
    max_duration_s: float = DEFAULT_VIDEO_MAX_DURATION_S,
    total_pixel_budget: int = DEFAULT_VIDEO_PIXEL_BUDGET,
    frame_max_pixels: int = DEFAULT_IMAGE_MAX_PIXELS,
    max_bytes: int = DEFAULT_VIDEO_MAX_BYTES,
) -> list[SampledFrame]:
    """Decode a video (mp4, webm, mov, mkv, gif, ...) and return frames nearest the sample times.

    Timestamps are those of the frames actually picked, relative to the video's start. Each frame
    is scaled down to an equal share of `total_pixel_budget` (and at most `frame_max_pixels`).
    """
    if fps is not None and not fps > 0:
        raise ValueError(f"fps must be > 0, got {fps}")
    if not 1 <= max_frames <= VIDEO_MAX_FRAMES_LIMIT:
        raise ValueError(f"max_frames must be between 1 and {VIDEO_MAX_FRAMES_LIMIT}, got {max_frames}")
    if not max_duration_s > 0:
        raise ValueError(f"max_duration_s must be > 0, got {max_duration_s}")
    if total_pixel_budget < 1:
        raise ValueError(f"total_pixel_budget must be >= 1, got {total_pixel_budget}")

    try:
        with _open_video(source, max_bytes) as container:
            stream = _video_stream(container)
            start_s, duration_s = _stream_span(container, stream)
            if duration_s is None:
                # No duration in the headers (some webm/mkv recordings): demux a second copy to find it.
                with _open_video(source, max_bytes) as scan:
                    duration_s = _scan_duration(scan, _video_stream(scan), start_s)
            if duration_s > max_duration_s:
                raise MediaError(
                    f"video is {duration_s:.1f} s long; the limit is max_duration_s={max_duration_s:g} s"
                )
            times = sample_times(duration_s, fps, max_frames)
            frame_pixels = max(1, min(frame_max_pixels, total_pixel_budget // len(times)))
            return _decode_nearest(container, stream, start_s, times, frame_pixels)
    except av.FFmpegError as err:
        raise MediaError(f"video could not be decoded: {err}") from err


def probe_video(source: str | os.PathLike[str] | bytes, *, max_bytes: int = DEFAULT_VIDEO_MAX_BYTES) -> VideoInfo:
    """Duration, size, frame rate and codec of a video, from its headers (demuxing only when needed)."""
    try:
        with _open_video(source, max_bytes) as container:
            stream = _video_stream(container)
            start_s, duration_s = _stream_span(container, stream)
            if duration_s is None:
                duration_s = _scan_duration(container, stream, start_s)
            rate = stream.average_rate or stream.guessed_rate
            return VideoInfo(
                duration_s=duration_s,
                width=stream.codec_context.width,
                height=stream.codec_context.height,
                fps=float(rate) if rate else None,
                codec=stream.codec_context.name,
            )
    except av.FFmpegError as err:
        raise MediaError(f"video could not be read: {err}") from err


@contextmanager
def _open_video(source: str | os.PathLike[str] | bytes, max_bytes: int) -> Iterator[av.container.InputContainer]:
    if isinstance(source, (bytes, bytearray, memoryview)):
        size = len(source)
        target: object = io.BytesIO(bytes(source))
    else:
        path = Path(source)
        if not path.is_file():
            raise MediaError(f"video file not found: {path}")
        size = path.stat().st_size
        target = str(path)
    if size > max_bytes:
        raise MediaError(f"video is {size / 1e6:.1f} MB; the limit is max_bytes={max_bytes / 1e6:.0f} MB")
    if size == 0:
        raise MediaError("video is empty (0 bytes)")
    try:
        container = av.open(target, mode="r")
    except av.FFmpegError as err:
        raise MediaError(f"video could not be opened: {err}") from err
    try:
        yield container
    finally:
        container.close()


def _video_stream(container: av.container.InputContainer) -> av.video.stream.VideoStream:
    if not container.streams.video:
        raise MediaError("the file has no video stream")
    stream = container.streams.video[0]
    # Let FFmpeg decode with threads; frame order and timestamps are unaffected.
    stream.thread_type = "AUTO"
    return stream


def _stream_span(
    container: av.container.InputContainer, stream: av.video.stream.VideoStream
) -> tuple[float, float | None]:
    """(start, duration) in seconds from the headers; duration None when the file does not say."""
    time_base = stream.time_base
    start_s = float(stream.start_time * time_base) if stream.start_time is not None and time_base else 0.0
    if stream.duration and time_base:
        return start_s, float(stream.duration * time_base)
    if container.duration:
        container_start = container.start_time / av.time_base if container.start_time is not None else 0.0
        return start_s, container.duration / av.time_base - (start_s - container_start)
    return start_s, None


def _scan_duration(
    container: av.container.InputContainer, stream: av.video.stream.VideoStream, start_s: float
) -> float:
    end_s = start_s
    for packet in container.demux(stream):
        if packet.pts is not None and packet.time_base:
            end_s = max(end_s, float((packet.pts + (packet.duration or 0)) * packet.time_base))
    return end_s - start_s


def _frame_time(frame: av.VideoFrame) -> float:
    if frame.time is None:
        raise MediaError("video frames carry no timestamps; re-encode it (for example to mp4)")
    return frame.time


def _decode_nearest(
    container: av.container.InputContainer,
    stream: av.video.stream.VideoStream,
    start_s: float,
    times: list[float],
    frame_pixels: int,
) -> list[SampledFrame]:
    """For each time, the decoded frame whose timestamp is nearest to it (duplicates dropped)."""
    frames = container.decode(stream)
    previous: av.VideoFrame | None = None
    current: av.VideoFrame | None = None
    picked: list[SampledFrame] = []
    last_picked_time: float | None = None
    for wanted in times:
        target = start_s + wanted
        position = _frame_time(current) if current is not None else start_s
        if target - position > SEEK_GAP_S:
            # backward=True lands on the keyframe at or before the target; decoding forward from it
            # reaches the exact frame, so the timestamp is still the frame's own.
            container.seek(int(target / stream.time_base), stream=stream, backward=True)
            frames = container.decode(stream)
            previous = current = None
        while current is None or _frame_time(current) < target:
            following = next(frames, None)
            if following is None:
                break
            previous, current = current, following
        if current is None:
            break
        best = current
        if previous is not None and abs(_frame_time(previous) - target) < abs(_frame_time(current) - target):
            best = previous
        best_time = _frame_time(best)
        if best_time == last_picked_time:
            continue
        last_picked_time = best_time
        picked.append(SampledFrame(max(0.0, best_time - start_s), _frame_image(best, frame_pixels)))
    if not picked:
        raise MediaError("no frames could be decoded from the video")
    return picked


def _frame_image(frame: av.VideoFrame, max_pixels: int) -> Image.Image:
    image = frame.to_image()
    # Phone videos store portrait orientation as a display-matrix rotation (degrees counterclockwise).
    rotation = frame.rotation
    if rotation:
        image = image.rotate(rotation, expand=True)
    return fit_pixels(image, max_pixels)
