"""`speed` through the MCP client: a step cache on a tiny FLUX.1 reuses passes, reports them, and is deterministic."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from mcp import Client
from PIL import Image

from imgtools_mcp.config import Settings
from imgtools_mcp.server import build_server
from imgtools_mcp.testing import make_test_model

pytestmark = pytest.mark.anyio
# Twelve steps: TaylorSeer (fast) computes passes 0, 1, 2, 4 and 9.
REQUEST = {"prompt": "a lighthouse", "width": 64, "height": 64, "steps": 12, "seed": 1}


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("speed")
    return {"flux": make_test_model(root / "FLUX.1-dev", "flux"), "sd15": make_test_model(root / "sd15", "sd15")}


def settings_for(tmp_path: Path, model: Path) -> Settings:
    return Settings(model=str(model), output_dir=tmp_path / "out", device="cpu", hf_offline=True)


def ok(result) -> dict:
    assert not result.is_error, result.content[0].text
    return result.structured_content


def pixels(info: dict) -> np.ndarray:
    return np.asarray(Image.open(info["path"]).convert("RGB"), dtype=np.int16)


async def test_speed_levels_change_the_computed_passes_and_stay_deterministic(tmp_path: Path, models) -> None:
    async with Client(build_server(settings_for(tmp_path, models["flux"]))) as client:
        quality = ok(await client.call_tool("generate", REQUEST))
        fast = ok(await client.call_tool("generate", {**REQUEST, "speed": "fast"}))
        fast_again = ok(await client.call_tool("generate", {**REQUEST, "speed": "fast"}))
        balanced = ok(await client.call_tool("generate", {**REQUEST, "speed": "balanced"}))
        quality_after = ok(await client.call_tool("generate", REQUEST))
    # A plain request carries no cache and records no speed.
    assert "step_cache" not in quality["engine"] and "speed" not in quality["parameters"]
    cache = fast["engine"]["step_cache"]
    assert cache["method"] == "taylorseer_cache" and cache["interval"] == 5 and fast["parameters"]["speed"] == "fast"
    assert cache["denoiser_passes"] == 12  # FLUX.1 dev: distilled guidance, one pass per step
    assert (cache["computed"], cache["reused"]) == (5, 7), cache
    a, b = pixels(quality["images"][0]), pixels(fast["images"][0])
    assert not np.array_equal(a, b) and np.abs(a - b).mean() < 8, np.abs(a - b).mean()  # predicted, not garbage
    assert np.array_equal(b, pixels(fast_again["images"][0]))
    assert fast_again["engine"]["step_cache"] == cache
    # balanced: First Block Cache, which reuses a pass only once the first block's output settles (this random tiny
    # model's never does, so every pass is computed and the image is quality's); the hooks are gone afterwards.
    fbc = balanced["engine"]["step_cache"]
    assert (fbc["method"], fbc["threshold"], fbc["denoiser_passes"]) == ("first_block_cache", 0.08, 12), fbc
    assert fbc["computed"] < 12 or np.array_equal(pixels(balanced["images"][0]), a)
    assert np.array_equal(a, pixels(quality_after["images"][0]))
    infotext = Image.open(fast["images"][0]["path"]).text["parameters"]
    assert 'Step cache: "fast, taylorseer_cache interval 5, 5/12 computed"' in infotext


UNET_REQUEST = {"prompt": "a lighthouse", "negative_prompt": "fog", "width": 64, "height": 64, "steps": 8, "seed": 3}
# DeepCache's schedule over 8 steps: balanced computes steps 0, 2, 4, 6; fast 0, 3, 6.
UNET_COMPUTED = {"balanced": 4, "fast": 3}


async def test_unet_step_cache_follows_its_schedule_and_stays_close(tmp_path: Path, tiny_sd15: Path) -> None:
    async with Client(build_server(settings_for(tmp_path, tiny_sd15))) as client:
        plain = ok(await client.call_tool("generate", UNET_REQUEST))
        quality = ok(await client.call_tool("generate", {**UNET_REQUEST, "speed": "quality"}))
        runs = {speed: ok(await client.call_tool("generate", {**UNET_REQUEST, "speed": speed})) for speed in UNET_COMPUTED}
        fast_again = ok(await client.call_tool("generate", {**UNET_REQUEST, "speed": "fast"}))
    # quality is the plain request: no hooks, bit for bit the same image.
    assert "step_cache" not in quality["engine"] and np.array_equal(pixels(plain["images"][0]), pixels(quality["images"][0]))
    base = pixels(plain["images"][0])
    for speed, computed in UNET_COMPUTED.items():
        cache = runs[speed]["engine"]["step_cache"]
        assert cache == {"speed": speed, "method": "deep_cache", "reason": cache["reason"], "interval": {"balanced": 2, "fast": 3}[speed],
                         "denoiser_passes": 8, "computed": computed, "reused": 8 - computed}  # CFG: one batch-2 pass a step
        assert not any(w.startswith("speed: ") for w in runs[speed]["warnings"])
        image = pixels(runs[speed]["images"][0])
        # Reused deep features change the image, but it stays the same picture: the random tiny UNet's
        # images differ by ~1.2 (balanced) and ~1.5 (fast) levels of 255 on average here, against ~44 between two seeds.
        difference = np.abs(image - base).mean()
        assert 0 < difference < 8, (speed, difference)
        infotext = Image.open(runs[speed]["images"][0]["path"]).text["parameters"]
        assert f'Step cache: "{speed}, deep_cache interval {cache["interval"]}, {computed}/8 computed"' in infotext
    assert np.array_equal(pixels(runs["fast"]["images"][0]), pixels(fast_again["images"][0]))


async def test_a_sweep_over_speed_runs_each_cache(tmp_path: Path, tiny_sd15: Path) -> None:
    async with Client(build_server(settings_for(tmp_path, tiny_sd15))) as client:
        result = ok(await client.call_tool("sweep", {"tool": "generate", "base": UNET_REQUEST,
                                                     "x": {"param": "speed", "values": ["quality", "balanced", "fast"]}}))
    cells = result["cells"]
    assert len(cells) == 3 and all(cell.get("image") for cell in cells), cells
    quality, balanced, fast = (pixels(cell["image"]) for cell in cells)
    assert not np.array_equal(quality, fast) and not np.array_equal(balanced, fast)
    infotexts = [Image.open(cell["image"]["path"]).text["parameters"] for cell in cells]
    assert "Step cache" not in infotexts[0] and "4/8 computed" in infotexts[1] and "3/8 computed" in infotexts[2]


async def test_sdxl_runs_with_the_unet_step_cache(tmp_path: Path, tiny_sdxl: Path) -> None:
    async with Client(build_server(settings_for(tmp_path, tiny_sdxl))) as client:
        result = ok(await client.call_tool("generate", {**UNET_REQUEST, "speed": "fast"}))
    cache = result["engine"]["step_cache"]
    assert cache["method"] == "deep_cache" and (cache["denoiser_passes"], cache["computed"]) == (8, 3)


async def test_controlnet_residuals_reach_the_cached_unet(tmp_path: Path, tiny_sd15: Path) -> None:
    import base64
    import io

    from PIL import ImageDraw

    from imgtools_mcp.testing.tiny_controlnet import make_test_controlnet

    make_test_controlnet(tiny_sd15, tmp_path / "controlnets" / "control_v11p_sd15_canny")
    drawing = Image.new("RGB", (64, 64), "black")
    ImageDraw.Draw(drawing).ellipse((12, 8, 52, 56), fill="white")
    buffer = io.BytesIO()
    drawing.save(buffer, format="PNG")
    control = [{"type": "canny", "image": "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()}]
    settings = settings_for(tmp_path, tiny_sd15).model_copy(update={"controlnet_dirs": [tmp_path / "controlnets"]})
    async with Client(build_server(settings)) as client:
        plain = ok(await client.call_tool("generate", {**UNET_REQUEST, "speed": "fast"}))
        controlled = ok(await client.call_tool("generate", {**UNET_REQUEST, "speed": "fast", "control": control}))
    assert controlled["engine"]["step_cache"]["computed"] == 3
    # The shallow residuals ControlNet adds are fresh on every step, so control still shapes the image.
    assert np.abs(pixels(controlled["images"][0]) - pixels(plain["images"][0])).mean() > 2


async def test_a_lora_applies_on_cached_and_full_passes(tmp_path: Path, tiny_sd15: Path) -> None:
    from imgtools_mcp.testing.files import make_test_lora

    make_test_lora(tiny_sd15, tmp_path / "loras" / "tiny_style.safetensors", seed=1)
    settings = settings_for(tmp_path, tiny_sd15).model_copy(update={"lora_dirs": [tmp_path / "loras"]})
    styled = {**UNET_REQUEST, "loras": [{"name": "tiny_style", "weight": 1.0}]}
    async with Client(build_server(settings)) as client:
        plain_fast = ok(await client.call_tool("generate", {**UNET_REQUEST, "speed": "fast"}))
        quality = ok(await client.call_tool("generate", styled))
        fast = ok(await client.call_tool("generate", {**styled, "speed": "fast"}))
    assert fast["engine"]["step_cache"]["computed"] == 3
    styled_fast, base = pixels(fast["images"][0]), pixels(quality["images"][0])
    # Closer to the same LoRA at quality than to the cached run without it.
    assert np.abs(styled_fast - base).mean() < np.abs(styled_fast - pixels(plain_fast["images"][0])).mean()


async def test_a_bad_speed_is_a_one_line_error_naming_it(tmp_path: Path, models) -> None:
    async with Client(build_server(settings_for(tmp_path, models["flux"]))) as client:
        result = await client.call_tool("generate", {**REQUEST, "speed": "ludicrous"})
    assert result.is_error
    text = result.content[0].text
    assert "\n" not in text and "speed" in text and "quality" in text and "fast" in text
