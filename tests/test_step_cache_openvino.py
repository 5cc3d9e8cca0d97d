"""`speed` on the OpenVINO backend (the CPU's default for SD families): DeepCache through a shallow IR computes
what the torch hooks compute, on the same schedule, through the MCP client on the tiny models."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import UNet2DConditionModel
from mcp import Client
from PIL import Image

from imgtools_mcp.config import Settings
from imgtools_mcp.engine.backends.openvino_deep_cache import DeepFeature, ShallowUNet
from imgtools_mcp.server import build_server

from test_backends import AGREEMENT_LEVELS, needs_openvino

pytestmark = pytest.mark.anyio

REQUEST = {"prompt": "a lighthouse", "negative_prompt": "fog", "width": 64, "height": 64, "steps": 8, "seed": 3}
# DeepCache's schedule over 8 steps: balanced computes steps 0, 2, 4, 6; fast 0, 3, 6 (as on torch).
COMPUTED = {"balanced": 4, "fast": 3}


def settings_for(model: Path, tmp_path: Path, backend: str) -> Settings:
    return Settings(model=str(model), output_dir=tmp_path / "out", device="cpu", hf_offline=True, backend=backend,
                    cache_dir=tmp_path / "cache", quantize="none")  # fmt: skip


def ok(result) -> dict:
    assert not result.is_error, result.content[0].text
    return result.structured_content


def pixels(info: dict) -> np.ndarray:
    return np.asarray(Image.open(info["images"][0]["path"]).convert("RGB"), dtype=np.int16)


@pytest.mark.parametrize("family", ["sd15", "sdxl"])
def test_the_shallow_path_on_a_full_pass_deep_feature_is_the_full_unet(family: str, tiny_models: dict[str, Path]) -> None:
    unet = UNet2DConditionModel.from_pretrained(tiny_models[family] / "unet").eval()
    config = unet.config
    generator = torch.Generator().manual_seed(0)
    sample = torch.randn(2, config.in_channels, 32, 32, generator=generator)
    states = torch.randn(2, 77, config.cross_attention_dim, generator=generator)
    timestep, extra, added = torch.tensor([500.0]), {}, {}
    if family == "sdxl":
        pooled = unet.add_embedding.linear_1.in_features - 6 * config.addition_time_embed_dim
        extra = {"text_embeds": torch.randn(2, pooled, generator=generator), "time_ids": torch.tensor([[64.0, 64, 0, 0, 64, 64]] * 2)}
        added = {"added_cond_kwargs": extra}
    with torch.no_grad(), DeepFeature(unet) as deep:
        full = unet(sample, timestep, states, return_dict=False, **added)[0]
    with torch.no_grad():
        shallow = ShallowUNet(unet, sdxl=family == "sdxl")(sample, timestep, states, deep.value, **extra)
        other = ShallowUNet(unet, sdxl=family == "sdxl")(sample, timestep, states, torch.zeros_like(deep.value), **extra)
    assert torch.equal(shallow, full)
    assert not torch.allclose(other, full, atol=1e-3)  # the deep feature really is an input of it


@needs_openvino
@pytest.mark.parametrize("family", ["sd15", "sdxl"])
async def test_openvino_reuses_the_passes_torch_reuses_and_agrees_with_it(family: str, tiny_models: dict[str, Path], tmp_path: Path) -> None:
    model = tiny_models[family]
    async with Client(build_server(settings_for(model, tmp_path, "openvino"))) as client:
        quality = ok(await client.call_tool("generate", REQUEST))
        ov = {speed: ok(await client.call_tool("generate", {**REQUEST, "speed": speed})) for speed in COMPUTED}
        again = ok(await client.call_tool("generate", {**REQUEST, "speed": "fast"}))
        after = ok(await client.call_tool("generate", REQUEST))
    async with Client(build_server(settings_for(model, tmp_path, "torch"))) as client:
        torch_runs = {speed: ok(await client.call_tool("generate", {**REQUEST, "speed": speed})) for speed in COMPUTED}
    for speed, computed in COMPUTED.items():
        cache = ov[speed]["engine"]["step_cache"]
        assert ov[speed]["engine"]["backend_components"]["unet"] == "openvino"
        assert (cache["method"], cache["denoiser_passes"], cache["computed"], cache["reused"]) == ("deep_cache", 8, computed, 8 - computed)
        assert "OpenVINO: a shallow IR" in cache["reason"]
        assert not any(w.startswith("speed: ") for w in ov[speed]["warnings"])
        assert torch_runs[speed]["engine"]["step_cache"]["computed"] == computed
        # The same computation as the torch hooks (within the OpenVINO-vs-torch agreement of test_backends.py) ...
        same = np.abs(pixels(ov[speed]) - pixels(torch_runs[speed])).mean()
        assert same < AGREEMENT_LEVELS, (speed, same)
        # ... and not the quality image: the reused passes changed it.
        assert np.abs(pixels(ov[speed]) - pixels(quality)).mean() > 0
    assert np.array_equal(pixels(ov["fast"]), pixels(again))
    assert np.array_equal(pixels(quality), pixels(after))  # a quality request after a cached one is untouched
    notes = ov["balanced"]["engine"]["backend_notes"]
    assert any(n.startswith("unet_shallow: converted to openvino") for n in notes), notes


@needs_openvino
def test_a_call_passed_to_torch_mid_request_counts_as_a_computed_pass(tiny_sd15: Path) -> None:
    from imgtools_mcp.engine.backends.base import BackendRun
    from imgtools_mcp.engine.backends.openvino_backend import OpenVINOUNet
    from imgtools_mcp.engine.step_cache import Cadence, StepCacheRun

    unet = UNet2DConditionModel.from_pretrained(tiny_sd15 / "unet").eval()
    run = BackendRun("openvino", "test")
    # A call the converted graph cannot take (a keyword it has no input for) runs the torch UNet; no IR is touched.
    wrapper = OpenVINOUNet(unet, part=None, run=run, sdxl=False)
    counted = StepCacheRun("balanced", "deep_cache", "test", interval=2)
    generator = torch.Generator().manual_seed(0)
    sample = torch.randn(2, unet.config.in_channels, 8, 8, generator=generator)
    states = torch.randn(2, 77, unet.config.cross_attention_dim, generator=generator)
    object.__setattr__(wrapper, "_deep", np.zeros(1))  # as if a full OpenVINO pass had kept its deep feature
    with torch.no_grad(), wrapper.deep_cache(Cadence(counted)):
        wrapper(sample, torch.tensor([900.0]), states, cross_attention_kwargs={"scale": 1.0})
        assert wrapper._deep is None  # the torch pass made none, so the next pass cannot reuse an older one
    assert (counted.passes, counted.computed) == (1, 1)
    assert run.notes == ["unet: a call ran on torch (cross_attention_kwargs given)"]
