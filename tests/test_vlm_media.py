"""Images to data URLs and video frame sampling, on real files written with PIL and PyAV."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

from imgtools_mcp.vlm import MediaError, fit_pixels, image_to_data_url, probe_video, sample_frames
from imgtools_mcp.vlm.media import sample_times

WIDTH, HEIGHT, FPS = 64, 48, 10
BLOCK = 16  # 4 x 3 blocks of 16 px, one bit of the frame index each


def index_frame(index: int) -> np.ndarray:
    """A frame whose black/white blocks spell its index in binary; survives lossy codecs."""
    pixels = np.zeros((HEIGHT, WIDTH, 3), np.uint8)
    for bit in range(12):
        row, column = divmod(bit, 4)
        if (index >> bit) & 1:
            pixels[row * BLOCK : (row + 1) * BLOCK, column * BLOCK : (column + 1) * BLOCK] = 255
    return pixels


def read_index(image: Image.Image) -> int:
    gray = np.asarray(image.convert("L").resize((WIDTH, HEIGHT)), dtype=float)
    index = 0
    for bit in range(12):
        row, column = divmod(bit, 4)
        # The block's centre only: edges blur under chroma subsampling and scaling.
        centre = gray[row * BLOCK + 4 : (row + 1) * BLOCK - 4, column * BLOCK + 4 : (column + 1) * BLOCK - 4]
        if centre.mean() > 128:
            index |= 1 << bit
    return index


def write_video(
    path: Path, frames: int, *, codec: str = "libx264", rotation: int | None = None, options: dict | None = None
) -> Path:
    with av.open(str(path), "w", options=options or {}) as container:
        stream = container.add_stream(codec, rate=FPS)
        stream.width, stream.height = WIDTH, HEIGHT
        stream.pix_fmt = "rgb8" if codec == "gif" else "yuv420p"
        if rotation is not None:
            stream.set_display_rotation(rotation)
        for index in range(frames):
            for packet in stream.encode(av.VideoFrame.from_ndarray(index_frame(index), format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


@pytest.fixture(scope="module")
def videos(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("videos")
    return {
        "mp4": write_video(folder / "three_seconds.mp4", 3 * FPS),
        "webm": write_video(folder / "three_seconds.webm", 3 * FPS, codec="libvpx-vp9"),
        "mov": write_video(folder / "three_seconds.mov", 3 * FPS, codec="mpeg4"),
        "gif": write_video(folder / "three_seconds.gif", 3 * FPS, codec="gif"),
        "long": write_video(folder / "thirty_seconds.mp4", 30 * FPS),
        "rotated": write_video(folder / "portrait.mp4", 3 * FPS, rotation=90),
        # like a browser MediaRecorder file: no duration anywhere in the headers
        "live": write_video(folder / "recording.webm", 3 * FPS, codec="libvpx", options={"live": "1"}),
    }


def decode_data_url(url: str) -> tuple[str, Image.Image]:
    header, payload = url.split(",", 1)
    image = Image.open(io.BytesIO(base64.b64decode(payload)))
    return header, image


# -- images -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("size", "budget", "expected"),
    [((2000, 1000), 1024 * 1024, (1448, 724)), ((640, 480), 1024 * 1024, (640, 480)), ((100, 3), 50, (40, 1))],
)
def test_fit_pixels_downscales_to_the_budget_keeping_aspect(size, budget, expected):
    fitted = fit_pixels(Image.new("RGB", size), budget)
    assert fitted.size == expected
    assert fitted.width * fitted.height <= budget


def test_data_url_is_jpeg_for_opaque_and_png_for_transparent_images():
    opaque = Image.new("RGB", (300, 200), (10, 200, 30))
    header, image = decode_data_url(image_to_data_url(opaque, max_pixels=150 * 100))
    assert header == "data:image/jpeg;base64" and image.format == "JPEG" and image.size == (150, 100)
    header, image = decode_data_url(image_to_data_url(Image.new("RGBA", (30, 20), (10, 200, 30, 128))))
    assert header == "data:image/png;base64" and image.mode == "RGBA" and image.getpixel((0, 0))[3] == 128
    header, image = decode_data_url(image_to_data_url(Image.new("RGB", (30, 20)), image_format="png"))
    assert header == "data:image/png;base64" and image.format == "PNG"


def test_data_url_applies_exif_orientation():
    buffer = io.BytesIO()
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 degrees clockwise to display
    Image.new("RGB", (40, 20), (255, 255, 255)).save(buffer, format="JPEG", exif=exif)
    _, image = decode_data_url(image_to_data_url(Image.open(io.BytesIO(buffer.getvalue()))))
    assert image.size == (20, 40)


def test_data_url_rejects_unknown_format():
    with pytest.raises(ValueError, match="image_format"):
        image_to_data_url(Image.new("RGB", (4, 4)), image_format="bmp")  # type: ignore[arg-type]


# -- video ------------------------------------------------------------------------------------------


def test_sample_times():
    assert sample_times(3.0, 2.0, 16) == [0.0, 0.5, 1.0, 1.5, 2.0, 2.5]
    assert sample_times(3.0, None, 3) == [0.5, 1.5, 2.5]
    # fps that would need more than max_frames falls back to covering the whole video evenly
    assert sample_times(30.0, 10.0, 3) == [5.0, 15.0, 25.0]


@pytest.mark.parametrize("kind", ["mp4", "webm", "mov", "gif"])
def test_frames_at_fixed_fps_are_the_frames_at_those_times(videos, kind):
    frames = sample_frames(videos[kind], fps=2)
    assert [read_index(frame.image) for frame in frames] == [0, 5, 10, 15, 20, 25]
    assert [frame.timestamp_s for frame in frames] == pytest.approx([0.0, 0.5, 1.0, 1.5, 2.0, 2.5], abs=1e-6)
    assert frames[0].image.size == (WIDTH, HEIGHT)


def test_even_sampling_picks_the_frame_nearest_each_slice_centre(videos):
    frames = sample_frames(videos["mp4"], max_frames=4)
    # centres 0.375, 1.125, 1.875, 2.625 s -> nearest frames at 0.4, 1.1, 1.9, 2.6 s
    assert [read_index(frame.image) for frame in frames] == [4, 11, 19, 26]
    assert [frame.timestamp_s for frame in frames] == pytest.approx([0.4, 1.1, 1.9, 2.6], abs=1e-6)


def test_max_frames_caps_fps_sampling(videos):
    frames = sample_frames(videos["mp4"], fps=10, max_frames=5)
    assert len(frames) == 5
    assert [read_index(frame.image) for frame in frames] == [3, 9, 15, 21, 27]


def test_more_frames_requested_than_the_video_has_gives_each_frame_once(tmp_path):
    path = write_video(tmp_path / "short.mp4", 3)
    frames = sample_frames(path, max_frames=16)
    assert [read_index(frame.image) for frame in frames] == [0, 1, 2]


def test_long_video_seeks_to_exact_frames_from_path_and_bytes(videos):
    frames = sample_frames(videos["long"], fps=0.1)
    assert [read_index(frame.image) for frame in frames] == [0, 100, 200]
    assert [frame.timestamp_s for frame in frames] == pytest.approx([0.0, 10.0, 20.0], abs=1e-6)
    frames = sample_frames(videos["long"].read_bytes(), max_frames=5)
    assert [read_index(frame.image) for frame in frames] == [30, 90, 150, 210, 270]


def test_total_pixel_budget_is_shared_between_frames(videos):
    frames = sample_frames(videos["mp4"], max_frames=4, total_pixel_budget=4 * 768)
    assert all(frame.image.width * frame.image.height <= 768 for frame in frames)
    assert frames[0].image.size == (32, 24)


def test_display_rotation_is_applied(videos):
    frames = sample_frames(videos["rotated"], fps=1)
    assert [frame.image.size for frame in frames] == [(HEIGHT, WIDTH)] * 3
    # 90 degrees counterclockwise on display; undo it to read the index
    assert [read_index(frame.image.rotate(-90, expand=True)) for frame in frames] == [0, 10, 20]


def test_video_without_a_duration_header_is_measured(videos):
    assert probe_video(videos["live"]).duration_s == pytest.approx(3.0)
    frames = sample_frames(videos["live"], max_frames=4)
    assert [read_index(frame.image) for frame in frames] == [4, 11, 19, 26]
    with pytest.raises(MediaError, match="max_duration_s=2"):
        sample_frames(videos["live"], max_duration_s=2)


def test_probe_video(videos):
    info = probe_video(videos["mp4"])
    assert (info.width, info.height, info.codec) == (WIDTH, HEIGHT, "h264")
    assert info.duration_s == pytest.approx(3.0)
    assert info.fps == pytest.approx(FPS)


def test_too_long_video_names_the_limit(videos):
    with pytest.raises(MediaError, match=r"30\.0 s long; the limit is max_duration_s=10"):
        sample_frames(videos["long"], max_duration_s=10)


def test_too_large_video_names_the_limit(videos):
    with pytest.raises(MediaError, match="max_bytes"):
        sample_frames(videos["mp4"], max_bytes=100)
    with pytest.raises(MediaError, match="max_bytes"):
        sample_frames(videos["mp4"].read_bytes(), max_bytes=100)


def test_unreadable_inputs_are_media_errors(tmp_path):
    text_file = tmp_path / "notes.mp4"
    text_file.write_text("this is not a video")
    with pytest.raises(MediaError, match="could not be"):
        sample_frames(text_file)
    with pytest.raises(MediaError, match="not found"):
        sample_frames(tmp_path / "missing.mp4")
    with pytest.raises(MediaError, match="empty"):
        sample_frames(b"")
    with pytest.raises(MediaError, match="could not be"):
        sample_frames(b"\x00\x01garbage" * 100)


def test_bad_sampling_parameters_name_the_parameter(videos):
    with pytest.raises(ValueError, match="fps"):
        sample_frames(videos["mp4"], fps=0)
    with pytest.raises(ValueError, match="max_frames"):
        sample_frames(videos["mp4"], max_frames=0)
    with pytest.raises(ValueError, match="max_duration_s"):
        sample_frames(videos["mp4"], max_duration_s=-1)
