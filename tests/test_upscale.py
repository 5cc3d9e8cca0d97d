"""upscale through the MCP client: a random-weight ESRGAN loaded by spandrel, feathered tiles, Lanczos, the detail pass."""

from __future__ import annotations

import base64
import io
import json
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest
from mcp import Client
from PIL import Image, ImageDraw

from imgtools_mcp.config import Settings
from imgtools_mcp.engine.upscale import tile_boxes, tile_starts
from imgtools_mcp.infotext import parse_infotext
from imgtools_mcp.server import build_server
from imgtools_mcp.testing.tiny_upscaler import make_test_upscaler

pytestmark = pytest.mark.anyio


@pytest.fixture(scope="module")
def upscaler_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("upscalers")
    make_test_upscaler(folder / "tiny-x4.pth")
    make_test_upscaler(folder / "tiny-x4-st.safetensors", seed=1)
    return folder


@pytest.fixture
async def client(tmp_path: Path, tiny_sd15: Path, upscaler_dir: Path) -> AsyncIterator[Client]:
    settings = Settings(
        model=str(tiny_sd15), output_dir=tmp_path / "out", device="cpu", hf_offline=True, upscaler_dirs=[upscaler_dir]
    )
    async with Client(build_server(settings)) as connected:
        yield connected


def picture(size: int = 64) -> Image.Image:
    """Real pixels: two gradients and a solid shape, so an upscaler's output follows something."""
    ramp = np.linspace(0, 255, size, dtype=np.float32)
    pixels = np.stack([np.tile(ramp, (size, 1)), np.tile(ramp[:, None], (1, size)), np.full((size, size), 40.0)], axis=-1)
    image = Image.fromarray(pixels.astype(np.uint8), "RGB")
    ImageDraw.Draw(image).ellipse((size // 5, size // 4, size * 3 // 4, size * 3 // 5), fill=(250, 250, 30))
    return image


def data_url(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def output_pixels(result) -> np.ndarray:
    return np.asarray(Image.open(result.structured_content["images"][0]["path"]).convert("RGB"), dtype=np.float64)


async def test_4x_model_upscale_of_64_is_256_with_result_like_every_image_tool(client: Client) -> None:
    result = await client.call_tool("upscale", {"image": data_url(picture()), "scale": 4, "model": "tiny-x4"})
    assert not result.is_error, result.content
    data = result.structured_content
    image = data["images"][0]
    assert (image["width"], image["height"]) == (256, 256)
    assert data["upscaler"]["architecture"] == "ESRGAN" and data["upscaler"]["native_scale"] == 4
    assert data["detail"] is None and image["seed"] is None
    kinds = [block.type for block in result.content]
    assert kinds == ["text", "image", "resource_link"], kinds
    assert result.content[2].uri == image["uri"]
    png = Image.open(image["path"])
    assert png.size == (256, 256)
    _, _, fields = parse_infotext(png.text["parameters"])
    assert fields["Postprocess upscale by"] == "4" and fields["Postprocess upscaler"] == "tiny-x4"
    assert fields["Size"] == "256x256" and "Init image hash" in fields
    sidecar = json.loads(Path(image["path"]).with_suffix(".json").read_text())
    assert sidecar["tool"] == "upscale" and sidecar["upscaler"]["name"] == "tiny-x4"
    assert sidecar["input"]["width"] == 64
    # The model's output follows the picture (not a flat or clamped image the tile test could not tell apart).
    pixels = output_pixels(result)
    assert pixels.std() > 20
    upsized = np.asarray(picture().resize((256, 256)), dtype=np.float64)
    assert abs(np.corrcoef(pixels[..., 0].ravel(), upsized[..., 0].ravel())[0, 1]) > 0.3  # random weights: either sign


async def test_tiles_match_a_one_tile_run(client: Client) -> None:
    image = data_url(picture())
    whole = output_pixels(await client.call_tool("upscale", {"image": image, "scale": 4, "model": "tiny-x4", "tile": 64, "overlap": 0}))
    tiled = output_pixels(await client.call_tool("upscale", {"image": image, "scale": 4, "model": "tiny-x4", "tile": 32, "overlap": 16}))
    difference = np.abs(whole - tiled)
    assert difference.mean() < 0.5 and difference.max() <= 10, (difference.mean(), difference.max())
    # Without overlap the seams show: the tolerance above is tight enough to tell blending from none.
    seams = output_pixels(await client.call_tool("upscale", {"image": image, "scale": 4, "model": "tiny-x4", "tile": 32, "overlap": 0}))
    assert np.abs(whole - seams).max() > 30


async def test_safetensors_weights_and_a_2x_request_from_a_4x_model(client: Client) -> None:
    result = await client.call_tool("upscale", {"image": data_url(picture()), "scale": 2, "model": "tiny-x4-st"})
    assert not result.is_error, result.content
    image = result.structured_content["images"][0]
    assert (image["width"], image["height"]) == (128, 128)
    assert any("4x model" in warning and "Lanczos to 128x128" in warning for warning in result.structured_content["warnings"])


async def test_lanczos_with_a_diffusion_detail_pass_over_tiles(client: Client) -> None:
    image = data_url(picture())
    plain = await client.call_tool("upscale", {"image": image, "scale": 2})
    assert not plain.is_error, plain.content
    assert plain.structured_content["upscaler"] == {"name": "Lanczos"}
    expected = np.asarray(picture().resize((128, 128), Image.Resampling.LANCZOS), dtype=np.float64)
    assert np.abs(output_pixels(plain) - expected).max() <= 1
    detailed = await client.call_tool(
        "upscale",
        {"image": image, "scale": 2, "denoise": 0.5, "steps": 2, "seed": 7, "prompt": "a yellow ball", "detail_tile": 64},
    )
    assert not detailed.is_error, detailed.content
    data = detailed.structured_content
    assert (data["images"][0]["width"], data["images"][0]["height"]) == (128, 128)
    assert data["detail"]["tiles"] == 9 and data["detail"]["tile"] == [64, 64] and data["detail"]["seed"] == 7
    assert data["images"][0]["seed"] == 7
    assert np.abs(output_pixels(detailed) - output_pixels(plain)).mean() > 1  # the diffusion pass changed pixels
    _, _, fields = parse_infotext(Image.open(data["images"][0]["path"]).text["parameters"])
    assert fields["Denoising strength"] == "0.5" and fields["SD upscale upscaler"] == "Lanczos"
    assert fields["Seed"] == "7" and fields["Model"]


@pytest.mark.parametrize(
    ("arguments", "named"),
    [
        ({"scale": 3}, "scale"),
        ({"model": "no-such-upscaler"}, "model"),
        ({"tile": 32, "overlap": 32}, "overlap"),
        ({"denoise": 0.4, "steps": 1}, "denoise"),
        ({"denoise": 1.5}, "denoise"),
    ],
)
async def test_bad_inputs_name_the_parameter(client: Client, arguments: dict, named: str) -> None:
    result = await client.call_tool("upscale", {"image": data_url(picture()), **arguments})
    assert result.is_error
    text = result.content[0].text
    assert named in text, text
    assert "\n" not in text.strip()


async def test_an_output_too_large_is_refused_before_work(tmp_path: Path, tiny_sd15: Path) -> None:
    settings = Settings(model=str(tiny_sd15), output_dir=tmp_path / "out", device="cpu", hf_offline=True, max_pixels=64 * 64)
    async with Client(build_server(settings)) as connected:
        result = await connected.call_tool("upscale", {"image": data_url(picture()), "scale": 4})
    assert result.is_error and "scale: 4x of 64x64" in result.content[0].text


def test_tiles_cover_every_pixel_with_the_overlap_asked_for() -> None:
    for length, tile, overlap in [(256, 64, 16), (100, 64, 8), (513, 128, 32), (64, 64, 8)]:
        starts = tile_starts(length, tile, overlap)
        assert starts[0] == 0 and starts[-1] + min(tile, length) == length
        assert all(b - a <= tile - overlap for a, b in zip(starts, starts[1:]))
    assert len(tile_boxes(128, 96, 64, 32)) == 3 * 2


async def test_hires_returns_the_upscaled_size_with_a1111_fields(client: Client) -> None:
    base = {"prompt": "a yellow ball", "width": 64, "height": 64, "steps": 2, "seed": 4}
    result = await client.call_tool("generate", {**base, "hires": {"scale": 2, "denoise": 0.5}})
    assert not result.is_error, result.content
    data = result.structured_content
    image = data["images"][0]
    assert (image["width"], image["height"]) == (128, 128)
    assert data["parameters"]["hires"]["size"] == [128, 128] and data["parameters"]["hires"]["upscaler"] == "Lanczos"
    assert data["parameters"]["width"] == 64  # the first pass ran at the base size
    _, _, fields = parse_infotext(Image.open(image["path"]).text["parameters"])
    assert fields["Hires upscale"] == "2" and fields["Hires upscaler"] == "Lanczos" and fields["Size"] == "64x64"
    # With an upscaler model and a 1.5x scale the size is exact too; the second pass repainted the enlargement.
    modelled = await client.call_tool("generate", {**base, "hires": {"scale": 1.5, "denoise": 0.5, "upscaler": "tiny-x4"}})
    assert not modelled.is_error, modelled.content
    assert (modelled.structured_content["images"][0]["width"], modelled.structured_content["images"][0]["height"]) == (96, 96)
    bad = await client.call_tool("generate", {**base, "hires": {"scale": 2, "upscaler": "nope"}})
    assert bad.is_error and "hires.upscaler" in bad.content[0].text
