"""OpenVINO with int8 weights (IMGTOOLS_QUANTIZE=nncf_int8) through the MCP client on the tiny SD 1.5 model."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from mcp import Client
from ov_marks import needs_nncf
from PIL import Image
from pydantic import ValidationError

from imgtools_mcp.config import Settings, config_errors
from imgtools_mcp.engine.engine import Engine
from imgtools_mcp.server import build_server

pytestmark = pytest.mark.anyio

REQUEST = {"prompt": "a red cube on a table", "width": 64, "height": 64, "steps": 3, "seed": 7, "num_images": 1}
# Mean absolute difference allowed between the int8-weight and the bf16 OpenVINO images of one seed, in 0-255
# levels. Measured 1.4 (max 10) on the tiny SD 1.5 model, about what bf16 OpenVINO and bf16 torch differ by
# (tests/test_backends.py): int8 per-channel weights err by up to half of 1/255 of each channel's range, near
# bf16's own 1/256 relative rounding, and both compound through the steps. Another seed moves the image ~43
# levels, so 4 tells "the same picture" from "another one" by a factor of ten, with room for other CPUs' kernels.
INT8_LEVELS = 4.0



def settings_for(model: Path, tmp_path: Path, cache: Path, **extra) -> Settings:
    extra.setdefault("quantize", "none")  # bf16 reference runs: no int8-activation calibration (test_openvino_w8a8.py)
    return Settings(model=str(model), output_dir=tmp_path / "out", device="cpu", hf_offline=True, backend="openvino",
                    cache_dir=cache, **extra)  # fmt: skip


def pixels(result) -> np.ndarray:
    assert not result.is_error, result.content[0].text
    return np.asarray(Image.open(result.structured_content["images"][0]["path"]).convert("RGB"), dtype=np.int16)


@pytest.fixture(scope="module")
def ov_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("ov-int8-cache")


@needs_nncf
async def test_int8_weights_run_beside_the_bf16_ir_and_say_what_ran(tiny_sd15: Path, tmp_path: Path, ov_cache: Path) -> None:
    async with Client(build_server(settings_for(tiny_sd15, tmp_path / "bf16", ov_cache))) as client:
        plain = await client.call_tool("generate", REQUEST)
    async with Client(build_server(settings_for(tiny_sd15, tmp_path / "int8", ov_cache, quantize="nncf_int8"))) as client:
        quantized = await client.call_tool("generate", REQUEST)
        status = (await client.call_tool("engine_status", {})).structured_content
    a, b = pixels(plain), pixels(quantized)
    engine = quantized.structured_content["engine"]
    assert engine["backend"] == "openvino" and engine["backend_components"]["unet"] == "openvino", engine
    info = engine["quantization"]
    assert info["method"] == "nncf_int8" and info["components"] == ["unet"], info
    assert "IMGTOOLS_QUANTIZE=nncf_int8" in info["reason"]
    # The IR's real size: int8 weights (plus a scale and zero point per channel) against the bf16 UNet's bytes.
    assert 0.45 * info["bytes_before"] < info["bytes_after"] < 0.6 * info["bytes_before"], info  # measured 0.51
    assert any(n.startswith("unet: converted to openvino") for n in engine["backend_notes"]), engine["backend_notes"]
    (loaded,) = status["loaded_models"]
    assert loaded["quantization"]["method"] == "nncf_int8"
    # The bf16 run's IR stays: the int8 one is another cache entry, keyed with its weights.
    unets = sorted(ov_cache.glob("openvino/unet-*/meta.json"))
    assert len(unets) == 2, unets
    metas = [json.loads(p.read_text()) for p in unets]
    assert sorted(m.get("weights", "as loaded") for m in metas) == ["as loaded", "nncf_int8"]
    assert len(list(ov_cache.glob("openvino/vae_decoder-*/model.xml"))) == 1  # the VAE decoder is shared
    assert plain.structured_content["engine"].get("quantization", {}).get("method", "none") == "none"
    assert a.shape == b.shape and not np.array_equal(a, b)  # the weights really changed
    assert np.abs(a - b).mean() < INT8_LEVELS, np.abs(a - b).mean()


@needs_nncf
async def test_a_second_server_reads_the_int8_ir_from_disk(tiny_sd15: Path, tmp_path: Path, ov_cache: Path) -> None:
    async with Client(build_server(settings_for(tiny_sd15, tmp_path, ov_cache, quantize="nncf_int8"))) as client:
        await client.call_tool("generate", REQUEST)  # converts, unless the test above already did
    async with Client(build_server(settings_for(tiny_sd15, tmp_path, ov_cache, quantize="nncf_int8"))) as client:
        result = await client.call_tool("generate", REQUEST)
    assert not result.is_error, result.content[0].text
    engine = result.structured_content["engine"]
    assert engine["quantization"]["method"] == "nncf_int8"
    assert any(n.startswith("unet: openvino IR read from disk") for n in engine["backend_notes"]), engine["backend_notes"]
    assert len(list(ov_cache.glob("openvino/unet-*/model.xml"))) <= 2  # no third conversion


@needs_nncf
async def test_the_int8_level_on_openvino_takes_a_torch_method_when_one_is_installed(tiny_sd15: Path, tmp_path: Path,
                                                                                     ov_cache: Path) -> None:  # fmt: skip
    # nncf's int8 weights run slower than bf16 on the CPU (benchmarks/int8_cpu.py), so torch's int8 comes first.
    async with Client(build_server(settings_for(tiny_sd15, tmp_path, ov_cache, quantize="int8"))) as client:
        result = await client.call_tool("generate", REQUEST)
    assert not result.is_error, result.content[0].text
    engine = result.structured_content["engine"]
    assert engine["quantization"]["method"] in ("sdnq_int8", "torchao_int8"), engine["quantization"]
    assert engine["backend"] == "torch" and "run on torch" in engine["backend_reason"], engine


@needs_nncf
async def test_a_request_openvino_declines_says_its_unet_ran_unquantized(tiny_sd15: Path, tmp_path: Path, ov_cache: Path) -> None:
    from imgtools_mcp.testing.files import make_test_lora

    loras = tmp_path / "loras"
    make_test_lora(tiny_sd15, loras / "style.safetensors", seed=1)
    settings = settings_for(tiny_sd15, tmp_path, ov_cache, quantize="nncf_int8", lora_dirs=[loras])
    async with Client(build_server(settings)) as client:
        result = await client.call_tool("generate", {**REQUEST, "loras": [{"name": "style", "weight": 0.8}]})
    assert not result.is_error, result.content[0].text
    engine = result.structured_content["engine"]
    assert engine["backend_components"]["unet"] == "torch"
    assert any("nncf_int8 applies to the OpenVINO UNet only" in n for n in engine["backend_notes"]), engine["backend_notes"]


@needs_nncf
def test_nncf_int8_needs_the_openvino_backend(tiny_sd15: Path, tmp_path: Path) -> None:
    settings = Settings(model=str(tiny_sd15), output_dir=tmp_path, device="cpu", hf_offline=True, backend="torch",
                        quantize="nncf_int8")  # fmt: skip
    with pytest.raises(ValueError, match="quantize 'nncf_int8' cannot run here: .*rewrites openvino models; this model runs on torch"):
        Engine(settings)


def test_a_bad_quantize_value_is_one_line_naming_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IMGTOOLS_QUANTIZE", "int9")
    with pytest.raises(ValidationError) as caught:
        Settings()
    (line,) = config_errors(caught.value)
    assert line.startswith("IMGTOOLS_QUANTIZE") and "--quantize" in line, line
    for allowed in ("'auto'", "'none'", "'int8'", "'nncf_int8'"):
        assert allowed in line, line
    assert "int9" not in line  # config errors never echo the value given
