"""Quantized weights on a real tiny model through the MCP client: what ran is in the result, pixels stay close; checkpoints
stored quantized (an SDNQ repo, a bitsandbytes 4-bit repo) load as stored and are never quantized again, or are a
one-line error where they cannot load."""

from __future__ import annotations

import json
import shutil
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
# nf4 keeps the embedders and the output projection, as SDNQ does: 0.57 of the bytes remained for the tiny FLUX.1,
# 0.73 for the SD 1.5 UNet (its convolutions stay too); the mean difference from bf16 was 0.6 and 2.5 of 255 (SDNQ
# uint4: 0.7 and 2.0). The bounds are SDNQ 4-bit's below.
SHRINK_NF4 = {"flux": 0.65, "sd15": 0.78}
NF4_LEVELS = 6


@pytest.fixture(scope="module")
def flux(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_test_model(tmp_path_factory.mktemp("quant") / "FLUX.1-dev", "flux")


def beside(flux: Path, folder: Path) -> Path:
    """A copy of the pipeline folder that shares every component but the transformer with `flux`."""
    folder.mkdir(parents=True)
    for child in flux.iterdir():
        if child.name != "transformer":
            (folder / child.name).symlink_to(child, target_is_directory=child.is_dir())
    return folder


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
    async with Client(build_server(settings_for(tmp_path / "int8", flux, quantize="torchao_int8"))) as client:
        quantized = ok(await client.call_tool("generate", FAST))
    # auto on a machine with room to spare leaves the weights as loaded, and says so.
    assert plain["engine"]["quantization"]["method"] == "none"
    assert "not quantized" in plain["engine"]["quantization"]["reason"]
    info = quantized["engine"]["quantization"]
    assert info["method"] == "torchao_int8" and info["components"] == ["transformer"]
    assert "IMGTOOLS_QUANTIZE=torchao_int8" in info["reason"]
    # Linear weights of the transformer at one byte (plus scales) instead of four (fp32 on this CPU) or two.
    assert 0 < info["bytes_after"] < 0.7 * info["bytes_before"]
    a, b = pixels(plain["images"][0]), pixels(quantized["images"][0])
    assert a.shape == b.shape and not np.array_equal(a, b)  # the weights really changed
    assert np.abs(a - b).mean() < 40  # but the picture is the same picture (random weights only bound this)


@pytest.mark.parametrize("method", ["sdnq_int8", "sdnq_int4"])
@pytest.mark.parametrize("family", ["flux", "sd15"])
async def test_sdnq_weights_run_and_stay_close(tmp_path: Path, flux: Path, tiny_sd15: Path, family: str, method: str) -> None:
    model = flux if family == "flux" else tiny_sd15
    async with Client(build_server(settings_for(tmp_path / "plain", model))) as client:
        plain = ok(await client.call_tool("generate", FAST))
    async with Client(build_server(settings_for(tmp_path / method, model, quantize=method))) as client:
        quantized = ok(await client.call_tool("generate", FAST))
    info = quantized["engine"]["quantization"]
    denoiser = "transformer" if family == "flux" else "unet"
    assert info["method"] == method and info["components"] == [denoiser]
    assert f"IMGTOOLS_QUANTIZE={method}" in info["reason"]
    # Only Linear layers are rewritten, and SDNQ keeps the embedders, norms and output projection as they are; in these
    # tiny models those are a large share (0.72/0.60 of the bf16 bytes remain for FLUX.1, 0.82/0.75 for the SD 1.5 UNet,
    # whose convolutions stay too); in a real FLUX.1 the blocks are over 99% of the weights.
    shrink = {("flux", "sdnq_int8"): 0.75, ("flux", "sdnq_int4"): 0.65, ("sd15", "sdnq_int8"): 0.85, ("sd15", "sdnq_int4"): 0.78}
    assert 0 < info["bytes_after"] < shrink[family, method] * info["bytes_before"]
    a, b = pixels(plain["images"][0]), pixels(quantized["images"][0])
    assert a.shape == b.shape and not np.array_equal(a, b)  # the weights really changed
    # The same picture: the mean difference from bf16 was 0.5-0.6 (int8) and 0.6 (4-bit) of 255 for FLUX.1 and 1.7 and
    # 2.1 for SD 1.5 (2 steps at 64²); the bounds leave about 2-5x room and still catch a broken dequantization.
    assert np.abs(a - b).mean() < (3 if method == "sdnq_int8" else 6), np.abs(a - b).mean()


@pytest.mark.parametrize("family", ["flux", "sd15"])
async def test_bitsandbytes_nf4_weights_run_and_stay_close(tmp_path: Path, flux: Path, tiny_sd15: Path, family: str) -> None:
    model = flux if family == "flux" else tiny_sd15
    async with Client(build_server(settings_for(tmp_path / "plain", model))) as client:
        plain = ok(await client.call_tool("generate", FAST))
    async with Client(build_server(settings_for(tmp_path / "nf4", model, quantize="bnb_nf4"))) as client:
        quantized = ok(await client.call_tool("generate", FAST))
        again = ok(await client.call_tool("generate", FAST))  # the quantized model stays loaded and deterministic
    info = quantized["engine"]["quantization"]
    denoiser = "transformer" if family == "flux" else "unet"
    assert info["method"] == "bnb_nf4" and info["components"] == [denoiser], info
    assert "IMGTOOLS_QUANTIZE=bnb_nf4" in info["reason"]
    # nf4 is half a byte a weight and an fp32 absmax per 64.
    assert 0 < info["bytes_after"] < SHRINK_NF4[family] * info["bytes_before"], info
    a, b = pixels(plain["images"][0]), pixels(quantized["images"][0])
    assert a.shape == b.shape and not np.array_equal(a, b)  # the weights really changed
    assert np.array_equal(b, pixels(again["images"][0]))
    assert np.abs(a - b).mean() < NF4_LEVELS, np.abs(a - b).mean()


async def test_the_int8_level_takes_sdnq_on_cpu_when_installed(tmp_path: Path, flux: Path) -> None:
    async with Client(build_server(settings_for(tmp_path, flux, quantize="int8"))) as client:
        info = ok(await client.call_tool("generate", FAST))["engine"]["quantization"]
    assert info["method"] == "sdnq_int8" and "IMGTOOLS_QUANTIZE=int8: SDNQ int8 runs on cpu" in info["reason"]


def test_quantize_settings_are_the_planner_methods() -> None:
    allowed = set(Settings.model_fields["quantize"].annotation.__args__)
    assert allowed == {"auto", "none", "int8", "4bit", *METHODS}


@pytest.mark.parametrize(
    ("setting", "refusal"),
    [("torchao_fp8", "torchao float8 weight-only runs on cuda, not cpu")],
)
def test_an_explicit_method_that_cannot_run_here_is_refused_at_start(tmp_path: Path, flux: Path, setting, refusal) -> None:
    with pytest.raises(ValueError, match=f"quantize '{setting}' cannot run here: .*{refusal}"):
        Engine(settings_for(tmp_path, flux, quantize=setting))


def test_doctor_shows_the_quantization_and_step_caches_this_machine_would_choose(tmp_path: Path, flux: Path) -> None:
    from imgtools_mcp.doctor import collect

    full = collect(settings_for(tmp_path, flux))
    report = full["quantization"]
    assert full["step_cache"]["denoiser"] == "transformer"
    assert full["step_cache"]["speeds"]["fast"].startswith("taylorseer_cache, 3 full passes then one in every 5")
    assert report["levels"]["int8"]["method"] == "sdnq_int8" and report["levels"]["4bit"]["method"] == "sdnq_int4"
    assert "sdnq" in report["installed"]
    assert report["methods"]["sdnq_int8"] == {"available": True} and report["methods"]["sdnq_int4"] == {"available": True}
    assert report["methods"]["torchao_int8"] == {"available": True}
    assert report["methods"]["torchao_fp8"] == {"available": False, "reason": "torchao float8 weight-only runs on cuda, not cpu"}
    plan = report["default_model_plan"]
    assert plan["quantization"] is None and "not quantized" in plan["quantization_reason"]
    refused = collect(settings_for(tmp_path, flux, quantize="torchao_fp8"))
    assert any(p.startswith("quantize: quantize 'torchao_fp8' cannot run here") for p in refused["problems"])


@pytest.mark.parametrize("quantize", ["auto", "sdnq_int4"])
async def test_an_sdnq_repo_loads_as_stored_and_is_not_quantized_again(tmp_path: Path, flux: Path, quantize: str) -> None:
    pytest.importorskip("sdnq")
    import torch
    from diffusers import FluxTransformer2DModel
    from sdnq import SDNQConfig

    stored = beside(flux, tmp_path / "FLUX.1-dev-SDNQ-int8")
    config = SDNQConfig(weights_dtype="int8", minimum_allowed_numel=0)
    transformer = FluxTransformer2DModel.from_pretrained(flux / "transformer", torch_dtype=torch.bfloat16, quantization_config=config)
    transformer.save_pretrained(stored / "transformer")  # as SD.Next's SDNQ repos are written
    del transformer

    async with Client(build_server(settings_for(tmp_path / "plain", flux))) as client:
        plain = ok(await client.call_tool("generate", FAST))
    async with Client(build_server(settings_for(tmp_path / "stored", stored, quantize=quantize))) as client:
        result = ok(await client.call_tool("generate", FAST))
        status = (await client.call_tool("engine_status", {})).structured_content
    info = result["engine"]["quantization"]
    assert info["method"] == "sdnq" and info["components"] == ["transformer"], info
    assert "the checkpoint stores transformer quantized (sdnq): loaded as stored" in info["reason"], info
    assert "bytes_before" not in info and info["bytes_after"] > 0  # an SDNQ int8 asked for again would be no change
    (loaded,) = status["loaded_models"]
    assert loaded["quantization"] == info
    a, b = pixels(plain["images"][0]), pixels(result["images"][0])
    assert a.shape == b.shape and not np.array_equal(a, b)  # the stored int8 weights ran
    assert np.abs(a - b).mean() < 3, np.abs(a - b).mean()  # as SDNQ int8 applied at load does (test_quantize_run.py)


async def test_a_bitsandbytes_repo_on_the_cpu_is_a_one_line_error_that_says_what_to_do(tmp_path: Path, flux: Path) -> None:
    stored = beside(flux, tmp_path / "FLUX.1-dev-bnb-4bit")
    shutil.copytree(flux / "transformer", stored / "transformer")
    config = json.loads((stored / "transformer" / "config.json").read_text())
    config["quantization_config"] = {"quant_method": "bitsandbytes", "load_in_4bit": True, "bnb_4bit_quant_type": "nf4"}
    (stored / "transformer" / "config.json").write_text(json.dumps(config))
    async with Client(build_server(settings_for(tmp_path, flux))) as client:
        refused = await client.call_tool("generate", {**FAST, "model": str(stored)})
        still = await client.call_tool("generate", FAST)  # the server goes on serving
    assert refused.is_error
    (message,) = refused.content[0].text.removeprefix("Error executing tool generate: ").splitlines()
    assert message.startswith("model: 'FLUX.1-dev-bnb-4bit' cannot load here: its transformer is stored as bitsandbytes"), message
    assert "diffusers loads on cuda or xpu only, not cpu" in message and "IMGTOOLS_QUANTIZE=bnb_nf4" in message, message
    ok(still)
