"""Backends through the MCP client: OpenVINO agrees with torch, converts once per model, and hands torch what it cannot run."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from mcp import Client
from PIL import Image

from imgtools_mcp.cli import main as cli_main
from imgtools_mcp.config import Settings
from imgtools_mcp.engine.backends import backend_classes
from imgtools_mcp.engine.engine import Engine
from imgtools_mcp.testing.files import make_test_lora
from imgtools_mcp.server import build_server

pytestmark = pytest.mark.anyio

REQUEST = {"prompt": "a red cube on a table", "width": 64, "height": 64, "steps": 3, "seed": 7, "num_images": 2}
# Mean absolute difference allowed between OpenVINO and torch images of the same seed, in 0-255 pixel levels.
# Both compute in bf16 (8-bit mantissa: ~0.4% rounding per op); their kernels round and accumulate in different
# orders, and the difference compounds through the denoising steps: measured ~1.3-1.5 on both tiny families.
# A wrong graph (a dropped input, swapped guidance halves, a bad timestep) moves images as far as another seed
# does (~43 here), so 4 levels separates "the same computation" from "another one" by a factor of ten.
AGREEMENT_LEVELS = 4.0


def openvino_missing() -> str | None:
    from imgtools_mcp.engine.device import probe

    return backend_classes()["openvino"].unavailable(probe("cpu"))


needs_openvino = pytest.mark.skipif(openvino_missing() is not None, reason=f"OpenVINO: {openvino_missing()}")


def settings_for(model: Path, tmp_path: Path, backend: str, cache: Path, **extra) -> Settings:
    # These tests are about the bf16 IR: int8 activations (auto on a VNNI/AMX CPU) would calibrate in the background
    # after a few requests and add an IR of their own; tests/test_openvino_w8a8.py covers them.
    extra.setdefault("quantize", "none")
    return Settings(
        model=str(model), output_dir=tmp_path / "out", device="cpu", hf_offline=True, backend=backend, cache_dir=cache, **extra
    )


def images_of(result) -> np.ndarray:
    assert not result.is_error, result.content[0].text
    paths = [image["path"] for image in result.structured_content["images"]]
    return np.stack([np.asarray(Image.open(p).convert("RGB"), dtype=np.int16) for p in paths])


async def generate(settings: Settings, *requests: dict) -> list:
    async with Client(build_server(settings)) as client:
        return [await client.call_tool("generate", request) for request in requests]


@pytest.fixture(scope="module")
def ov_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One cache for the module, so each tiny model is converted once here."""
    return tmp_path_factory.mktemp("ov-cache")


@pytest.fixture(scope="module")
def deep_sd15(tmp_path_factory: pytest.TempPathFactory, tiny_models: dict[str, Path]) -> Path:
    """The tiny SD 1.5 pipeline with a four-level UNet: its latents must halve three times, so sizes go by 16 px.

    (The stock tiny UNet halves once on a 2x VAE, so every multiple-of-8 size suits it and nothing would fall back.)
    """
    import torch
    from diffusers import UNet2DConditionModel

    folder = tmp_path_factory.mktemp("models") / "tiny-sd15-deep"
    shutil.copytree(tiny_models["sd15"], folder)
    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        block_out_channels=(16, 16, 32, 32),
        layers_per_block=1,
        sample_size=32,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "DownBlock2D", "DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D", "UpBlock2D", "UpBlock2D"),
        norm_num_groups=8,
        cross_attention_dim=32,
        attention_head_dim=8,
    )
    shutil.rmtree(folder / "unet")
    unet.save_pretrained(folder / "unet")
    return folder


@needs_openvino
@pytest.mark.parametrize("family", ["sd15", "sdxl"])
async def test_openvino_images_match_torch(family: str, tiny_models: dict[str, Path], tmp_path: Path, ov_cache: Path) -> None:
    model = tiny_models[family]
    other_seed = {**REQUEST, "seed": 8}
    (ov,) = await generate(settings_for(model, tmp_path, "openvino", ov_cache), REQUEST)
    torch_same, torch_other = await generate(settings_for(model, tmp_path, "torch", ov_cache), REQUEST, other_seed)

    engine = ov.structured_content["engine"]
    assert engine["backend"] == "openvino", engine
    assert engine["backend_components"] == {"unet": "openvino", "vae_decoder": "openvino"}
    assert torch_same.structured_content["engine"]["backend"] == "torch"

    same = np.abs(images_of(ov) - images_of(torch_same)).mean()
    other = np.abs(images_of(torch_other) - images_of(torch_same)).mean()
    assert same < AGREEMENT_LEVELS, f"OpenVINO differs from torch by {same:.2f} levels (a different seed: {other:.2f})"
    assert other > 10 * AGREEMENT_LEVELS  # the bound is meaningful: another computation lands far outside it


@needs_openvino
async def test_second_server_reads_the_converted_model_from_disk(tiny_sd15: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    first, again, other_batch = await generate(
        settings_for(tiny_sd15, tmp_path, "openvino", cache), REQUEST, REQUEST, {**REQUEST, "num_images": 1}
    )
    # Within a server: the same shape reuses the compiled UNet; another batch compiles once, before its first step.
    assert "backend_notes" not in again.structured_content["engine"]
    batch_notes = other_batch.structured_content["engine"]["backend_notes"]
    assert len(batch_notes) == 1, batch_notes
    assert batch_notes[0].startswith("unet: openvino IR read from disk and compiled for sample 2x4x32x32"), batch_notes
    notes = first.structured_content["engine"]["backend_notes"]
    assert any(n.startswith("unet: converted to openvino") for n in notes), notes
    assert any(n.startswith("vae_decoder: converted to openvino") for n in notes), notes
    irs = sorted(cache.glob("openvino/*/model.xml"))
    assert len(irs) == 2
    written = {p: (p.stat().st_mtime_ns, (p.parent / "model.bin").stat().st_mtime_ns) for p in irs}

    (second,) = await generate(settings_for(tiny_sd15, tmp_path, "openvino", cache), REQUEST)
    notes = second.structured_content["engine"]["backend_notes"]
    assert not any("converted" in n for n in notes), notes
    assert any(n.startswith("unet: openvino IR read from disk") for n in notes), notes
    assert sorted(cache.glob("openvino/*/model.xml")) == irs
    assert {p: (p.stat().st_mtime_ns, (p.parent / "model.bin").stat().st_mtime_ns) for p in irs} == written
    assert np.array_equal(images_of(first), images_of(second))


@needs_openvino
async def test_changed_weights_are_converted_again(tiny_models: dict[str, Path], tmp_path: Path, ov_cache: Path) -> None:
    model = tmp_path / "model"
    shutil.copytree(tiny_models["sd15"], model)
    cache = tmp_path / "cache"
    await generate(settings_for(model, tmp_path, "openvino", cache), REQUEST)
    weights = next((model / "unet").glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes())  # same bytes, new mtime: the IR key must not trust the old one
    (again,) = await generate(settings_for(model, tmp_path, "openvino", cache), REQUEST)
    notes = again.structured_content["engine"]["backend_notes"]
    assert any(n.startswith("unet: converted") for n in notes), notes
    assert not any(n.startswith("vae_decoder: converted") for n in notes), notes  # the VAE's files did not change
    assert len(list(cache.glob("openvino/unet-*/model.xml"))) == 2


@needs_openvino
async def test_size_the_traced_unet_cannot_run_goes_to_torch(deep_sd15: Path, tmp_path: Path, ov_cache: Path) -> None:
    odd = {**REQUEST, "width": 64, "height": 72, "num_images": 1}
    even = {**REQUEST, "width": 64, "height": 80, "num_images": 1}
    odd_ov, even_ov = await generate(settings_for(deep_sd15, tmp_path, "openvino", ov_cache), odd, even)
    (odd_torch,) = await generate(settings_for(deep_sd15, tmp_path, "torch", ov_cache), odd)

    engine = odd_ov.structured_content["engine"]
    assert engine["backend"] == "torch"
    assert "64x72 is not a multiple of 16" in engine["backend_reason"]
    # Only the UNet is bound to traced sizes; the VAE decoder still runs on OpenVINO.
    assert engine["backend_components"] == {"unet": "torch", "vae_decoder": "openvino"}
    assert images_of(odd_ov).shape == (1, 72, 64, 3)
    assert np.abs(images_of(odd_ov) - images_of(odd_torch)).mean() < AGREEMENT_LEVELS
    assert even_ov.structured_content["engine"]["backend"] == "openvino"


@needs_openvino
async def test_lora_request_runs_its_unet_on_torch(tiny_sd15: Path, tmp_path: Path, ov_cache: Path) -> None:
    loras = tmp_path / "loras"
    make_test_lora(tiny_sd15, loras / "tiny_style.safetensors", seed=1)
    with_lora = {**REQUEST, "loras": [{"name": "tiny_style", "weight": 1.0}]}
    ov_lora, ov_plain = await generate(
        settings_for(tiny_sd15, tmp_path, "openvino", ov_cache, lora_dirs=[loras]), with_lora, REQUEST
    )
    torch_lora, torch_plain = await generate(
        settings_for(tiny_sd15, tmp_path, "torch", ov_cache, lora_dirs=[loras]), with_lora, REQUEST
    )

    engine = ov_lora.structured_content["engine"]
    assert engine["backend"] == "torch"
    assert "LoRA" in engine["backend_reason"]
    assert engine["backend_components"] == {"unet": "torch", "vae_decoder": "openvino"}
    assert ov_plain.structured_content["engine"]["backend"] == "openvino"  # nothing carried over
    # The LoRA really ran: its image is torch's LoRA image, well apart from the image without it (~9.5 levels).
    lora_effect = np.abs(images_of(torch_lora) - images_of(torch_plain)).mean()
    assert lora_effect > 2 * AGREEMENT_LEVELS
    assert np.abs(images_of(ov_lora) - images_of(torch_lora)).mean() < min(AGREEMENT_LEVELS, lora_effect / 4)
    assert np.abs(images_of(ov_plain) - images_of(torch_plain)).mean() < AGREEMENT_LEVELS


@needs_openvino
async def test_engine_status_shows_the_backend_and_why(tiny_sd15: Path, tmp_path: Path, ov_cache: Path) -> None:
    async with Client(build_server(settings_for(tiny_sd15, tmp_path, "auto", ov_cache))) as client:
        before = (await client.call_tool("engine_status", {})).structured_content
        result = await client.call_tool("generate", REQUEST)
        after = await client.call_tool("engine_status", {})
    # On a CPU with OpenVINO installed, auto picks it for SD-family models.
    assert before["backend"] == "openvino" and "OpenVINO" in before["backend_reason"]
    assert before["backends"]["openvino"]["available"] and set(before["backends"]) == set(backend_classes())
    engine = result.structured_content["engine"]
    assert engine["backend"] == "openvino" and engine["backend_reason"] == before["backend_reason"]
    (loaded,) = after.structured_content["loaded_models"]
    assert loaded["backend"] == "openvino"
    # The compiled graphs count against the cache budget beside the torch weights.
    assert loaded["memory_bytes"] > loaded["weights_bytes"] + loaded["adapter_bytes"]
    assert "(openvino)" in after.content[0].text


def test_explicit_backend_that_cannot_run_here_is_refused_at_start(tiny_sd15: Path, tmp_path: Path) -> None:
    from imgtools_mcp.engine.device import DeviceFacts

    gpu = DeviceFacts(
        kind="cuda", name="a CUDA GPU", index=0, total_memory_bytes=8 * 2**30, free_memory_bytes=8 * 2**30,
        supports_bf16=True, supports_fp16=True, compute_capability=(9, 0),
    )
    settings = settings_for(tiny_sd15, tmp_path, "openvino", tmp_path / "cache")
    with pytest.raises(ValueError, match=r"backend 'openvino' runs on cpu in this build, not on cuda"):
        Engine(settings, facts=gpu)


def test_doctor_reports_backends_and_refuses_unknown_ones(
    tiny_sd15: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    common = ["--model", str(tiny_sd15), "--device", "cpu", "--output-dir", str(tmp_path / "out")]
    assert cli_main(["doctor", "--json", *common, "--backend", "torch"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["backend"]["value"] == "torch"
    assert report["backends"]["torch"]["available"] is True
    assert set(report["backends"]) == {"torch", "openvino"}

    # ONNX Runtime was offered while it computed nothing; it is no longer a backend at all.
    with pytest.raises(SystemExit) as raised:
        cli_main(["doctor", *common, "--backend", "onnxruntime"])
    assert raised.value.code == 2
    err = capsys.readouterr().err
    assert "'onnxruntime'" in err and "'openvino'" in err


def test_backend_ids_match_the_settings_choices() -> None:
    from typing import get_args

    allowed = set(get_args(Settings.model_fields["backend"].annotation)) - {"auto"}
    assert set(backend_classes()) == allowed


async def test_sdxl_vae_is_kept_out_of_fp16(tiny_sdxl: Path, tmp_path: Path) -> None:
    """An fp16 SDXL model keeps its VAE in bf16 (fp32 where bf16 is not native) and still makes and edits images."""
    settings = settings_for(tiny_sdxl, tmp_path, "torch", tmp_path / "cache", dtype="fp16")
    async with Client(build_server(settings)) as client:
        made = await client.call_tool("generate", {**REQUEST, "num_images": 1})
        image = made.structured_content["images"][0]["id"]
        edited = await client.call_tool("edit", {"prompt": "a blue cube", "image": image, "steps": 3, "seed": 7})
    for result in (made, edited):
        engine = result.structured_content["engine"]
        assert engine["dtype"] == "fp16" and engine["vae_dtype"] in ("bfloat16", "float32"), engine
        pixels = images_of(result)
        assert pixels.std() > 5  # a real image, not the uniform black of a NaN decode


@pytest.mark.parametrize(
    ("blocks", "vae_scale", "multiple"),
    [((320, 640, 1280, 1280), 8, 64), ((320, 640, 1280), 8, 32), ((32, 64), 2, 4)],  # SD 1.x/2.x, SDXL, tiny test UNet
)
def test_sizes_a_traced_unet_runs(blocks: tuple[int, ...], vae_scale: int, multiple: int) -> None:
    from types import SimpleNamespace

    from imgtools_mcp.engine.backends.openvino_backend import unet_size_multiple

    assert unet_size_multiple(SimpleNamespace(block_out_channels=blocks), vae_scale) == multiple
