"""Checkpoints stored quantized (an SDNQ repo, a bitsandbytes 4-bit repo) through the MCP client on the tiny FLUX.1:
loaded as stored and said so, never quantized again; one that cannot load here is a one-line error."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from mcp import Client
from PIL import Image

from imgtools_mcp.config import Settings
from imgtools_mcp.server import build_server
from imgtools_mcp.testing import make_test_model

pytestmark = pytest.mark.anyio
FAST = {"prompt": "a lighthouse", "width": 64, "height": 64, "steps": 2, "seed": 3}


@pytest.fixture(scope="module")
def flux(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_test_model(tmp_path_factory.mktemp("stored") / "FLUX.1-dev", "flux")


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


def pixels(result: dict) -> np.ndarray:
    return np.asarray(Image.open(result["images"][0]["path"]).convert("RGB"), dtype=np.int16)


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
    a, b = pixels(plain), pixels(result)
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
