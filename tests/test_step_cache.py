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
# Twelve steps: the random tiny model's first block settles only late enough for First Block Cache to reuse a pass or two.
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
    assert cache["method"] == "first_block_cache" and fast["parameters"]["speed"] == "fast"
    assert cache["denoiser_passes"] == 12  # FLUX.1 dev: distilled guidance, one pass per step
    assert 0 < cache["computed"] < 12 and cache["reused"] == 12 - cache["computed"]
    assert not np.array_equal(pixels(quality["images"][0]), pixels(fast["images"][0]))
    assert np.array_equal(pixels(fast["images"][0]), pixels(fast_again["images"][0]))
    assert fast_again["engine"]["step_cache"] == cache
    # balanced reuses no more than fast (a lower threshold), and the hooks are gone afterwards.
    assert cache["computed"] <= balanced["engine"]["step_cache"]["computed"] <= 12
    assert np.array_equal(pixels(quality["images"][0]), pixels(quality_after["images"][0]))
    infotext = Image.open(fast["images"][0]["path"]).text["parameters"]
    assert f"Step cache: \"fast, first_block_cache 0.2, {cache['computed']}/12 computed\"" in infotext


async def test_unets_run_at_quality_and_say_so(tmp_path: Path, models) -> None:
    async with Client(build_server(settings_for(tmp_path, models["sd15"]))) as client:
        result = ok(await client.call_tool("generate", {**REQUEST, "steps": 2, "speed": "fast"}))
    assert result["engine"]["step_cache"]["method"] == "none"
    assert any(w.startswith("speed: ") and "run at quality" in w for w in result["warnings"])


async def test_a_bad_speed_is_a_one_line_error_naming_it(tmp_path: Path, models) -> None:
    async with Client(build_server(settings_for(tmp_path, models["flux"]))) as client:
        result = await client.call_tool("generate", {**REQUEST, "speed": "ludicrous"})
    assert result.is_error
    text = result.content[0].text
    assert "\n" not in text and "speed" in text and "quality" in text and "fast" in text
