"""Quantized weights on a real tiny model through the MCP client: what ran is in the result, pixels stay close."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from mcp import Client
from PIL import Image

from imgtools_mcp.config import Settings
from imgtools_mcp.engine.engine import Engine
from imgtools_mcp.engine.quantize import METHODS
from imgtools_mcp.server import build_server
from imgtools_mcp.testing import make_test_model

pytestmark = pytest.mark.anyio
FAST = {"prompt": "a lighthouse", "width": 64, "height": 64, "steps": 2, "seed": 3}


@pytest.fixture(scope="module")
def flux(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_test_model(tmp_path_factory.mktemp("quant") / "FLUX.1-dev", "flux")


def settings_for(tmp_path: Path, model: Path, **extra) -> Settings:
    return Settings(model=str(model), output_dir=tmp_path / "out", device="cpu", hf_offline=True, **extra)


def ok(result) -> dict:
    assert not result.is_error, result.content[0].text
    return result.structured_content


def pixels(info: dict) -> np.ndarray:
    return np.asarray(Image.open(info["path"]).convert("RGB"), dtype=np.int16)


async def test_int8_weights_run_and_say_what_ran(tmp_path: Path, flux: Path) -> None:
    async with Client(build_server(settings_for(tmp_path / "plain", flux))) as client:
        plain = ok(await client.call_tool("generate", FAST))
    async with Client(build_server(settings_for(tmp_path / "int8", flux, quantize="int8"))) as client:
        quantized = ok(await client.call_tool("generate", FAST))
    # auto on a machine with room to spare leaves the weights as loaded, and says so.
    assert plain["engine"]["quantization"]["method"] == "none"
    assert "not quantized" in plain["engine"]["quantization"]["reason"]
    info = quantized["engine"]["quantization"]
    assert info["method"] == "torchao_int8" and info["components"] == ["transformer"]
    assert "IMGTOOLS_QUANTIZE=int8" in info["reason"]
    # Linear weights of the transformer at one byte (plus scales) instead of four (fp32 on this CPU) or two.
    assert 0 < info["bytes_after"] < 0.7 * info["bytes_before"]
    a, b = pixels(plain["images"][0]), pixels(quantized["images"][0])
    assert a.shape == b.shape and not np.array_equal(a, b)  # the weights really changed
    assert np.abs(a - b).mean() < 40  # but the picture is the same picture (random weights only bound this)


def test_quantize_settings_are_the_planner_methods() -> None:
    allowed = set(Settings.model_fields["quantize"].annotation.__args__)
    assert allowed == {"auto", "none", "int8", "4bit", *METHODS}


@pytest.mark.parametrize(
    ("setting", "refusal"),
    [("torchao_fp8", "torchao float8 weight-only runs on cuda, not cpu"), ("bnb_nf4", "not applied by this build")],
)
def test_an_explicit_method_that_cannot_run_here_is_refused_at_start(tmp_path: Path, flux: Path, setting, refusal) -> None:
    with pytest.raises(ValueError, match=f"quantize '{setting}' cannot run here: .*{refusal}"):
        Engine(settings_for(tmp_path, flux, quantize=setting))


def test_doctor_shows_the_quantization_and_step_caches_this_machine_would_choose(tmp_path: Path, flux: Path) -> None:
    from imgtools_mcp.doctor import collect

    full = collect(settings_for(tmp_path, flux))
    report = full["quantization"]
    assert full["step_cache"]["denoiser"] == "transformer"
    assert full["step_cache"]["speeds"]["fast"].startswith("first_block_cache, threshold 0.2")
    assert report["levels"]["int8"]["method"] == "torchao_int8"
    assert report["methods"]["torchao_fp8"] == {"available": False, "reason": "torchao float8 weight-only runs on cuda, not cpu"}
    plan = report["default_model_plan"]
    assert plan["quantization"] is None and "not quantized" in plan["quantization_reason"]
    refused = collect(settings_for(tmp_path, flux, quantize="torchao_fp8"))
    assert any(p.startswith("quantize: quantize 'torchao_fp8' cannot run here") for p in refused["problems"])
