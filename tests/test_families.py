"""The family registry: every family's declaration is coherent, and models are recognised from their files alone."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import diffusers
import pytest

from imgtools_mcp.engine import families
from imgtools_mcp.engine.families import FamilySpec, UnknownFamilyError, registry
from imgtools_mcp.engine.samplers import SAMPLERS


@pytest.mark.parametrize("spec", families.all_families(), ids=lambda s: s.id)
def test_every_family_declares_what_the_engine_needs(spec: FamilySpec) -> None:
    for mode, cls in spec.pipelines.items():
        assert mode in families.MODES
        assert cls is None or hasattr(diffusers, cls), f"{spec.id}: diffusers has no {cls}"
    assert spec.pipelines.get("txt2img") or spec.pipelines.get("instruct") or spec.pipelines.get("inpaint")
    assert spec.single_file_class is None or hasattr(diffusers, spec.single_file_class)
    assert spec.native_size % spec.size_multiple == 0
    assert spec.samplers and set(spec.samplers) <= set(SAMPLERS)
    assert spec.guidance_knob in families.GUIDANCE_KWARG
    assert spec.footprint_bytes > 0 and spec.backends and "torch" in spec.backends
    assert families.get(spec.id) is spec


def test_a_second_family_with_the_same_id_is_refused() -> None:
    sd1 = families.get("sd1")
    with pytest.raises(ValueError, match="already registered"):
        registry.register(dataclasses.replace(sd1, label="another"))
    assert families.get("sd1") is sd1
    with pytest.raises(UnknownFamilyError, match="known: .*sd1"):
        families.get("no-such-family")


def test_diffusers_folders_are_recognised_from_their_files(tiny_models: dict[str, Path], tiny_sd15_inpaint: Path) -> None:
    sd15 = families.detect_folder(tiny_models["sd15"])
    sdxl = families.detect_folder(tiny_models["sdxl"])
    inpaint = families.detect_folder(tiny_sd15_inpaint)
    assert (sd15.family.id, sd15.native_size, sd15.inpainting, sd15.turbo) == ("sd1", 64, False, False)
    assert (sdxl.family.id, sdxl.default_steps, sdxl.default_guidance) == ("sdxl", 30, 5.0)
    assert (inpaint.family.id, inpaint.inpainting) == ("sd1", True)
    assert inpaint.pipeline_for("inpaint") == "StableDiffusionInpaintPipeline"


def test_variants_take_their_defaults_from_the_name() -> None:
    configs = {"model_index": {"_class_name": "StableDiffusionXLPipeline"}, "unet": {"sample_size": 128}}
    turbo = families.detect_configs(configs, "sdxl-turbo")
    lightning = families.detect_configs(configs, "SDXL-Lightning-4step")
    plain = families.detect_configs(configs, "sd_xl_base_1.0")
    assert (turbo.variant.id, turbo.default_steps, turbo.default_guidance, turbo.turbo) == ("turbo", 4, 0.0, True)
    assert lightning.variant.id == "lightning"
    assert (plain.variant, plain.default_steps, plain.native_size) == (None, 30, 1024)


def test_single_file_checkpoints_by_tensor_names() -> None:
    unet = {"model.diffusion_model.input_blocks.0.0.weight"}
    assert families.family_from_state_dict_keys(unet, "v1-5").family.id == "sd1"
    assert families.family_from_state_dict_keys(unet | {"cond_stage_model.model.ln_final.weight"}, "v2").family.id == "sd2"
    xl = families.family_from_state_dict_keys(unet | {"conditioner.embedders.1.model.ln_final.weight"}, "xl")
    assert (xl.family.id, xl.native_size) == ("sdxl", 1024)
    assert families.family_from_state_dict_keys(unet, "sd-inpainting", unet_in_channels=9).inpainting


def test_a_pipeline_of_no_known_family_is_named() -> None:
    with pytest.raises(UnknownFamilyError, match="KandinskyPipeline"):
        families.detect_configs({"model_index": {"_class_name": "KandinskyPipeline"}}, "k")


def _device(kind: str, free_gb: float):
    from imgtools_mcp.engine.device import DeviceFacts

    return DeviceFacts(
        kind=kind, name=f"{kind} test", index=None if kind == "cpu" else 0, total_memory_bytes=int(free_gb * 2**30),
        free_memory_bytes=int(free_gb * 2**30), supports_bf16=True, supports_fp16=kind != "cpu",
    )


@pytest.mark.parametrize(
    "kind, free_gb, expected",
    [
        ("cpu", 120, "stabilityai/sd-turbo"),  # even a big CPU: a DiT step takes minutes there
        ("cuda", 6, "stabilityai/sd-turbo"),
        ("cuda", 12, "stabilityai/sdxl-turbo"),
        ("cuda", 22, "black-forest-labs/FLUX.2-klein-4B"),
        ("cuda", 80, "Tongyi-MAI/Z-Image-Turbo"),
    ],
)
def test_auto_model_is_picked_by_device_and_free_memory(kind: str, free_gb: float, expected: str) -> None:
    from imgtools_mcp.engine.auto_model import choose_auto_model

    choice = choose_auto_model(_device(kind, free_gb))
    assert choice.value == expected
    assert "IMGTOOLS_MODEL=auto" in choice.reason


@pytest.mark.anyio
async def test_engine_status_says_which_model_auto_picked_and_why(tmp_path: Path) -> None:
    from mcp import Client

    from imgtools_mcp.config import Settings
    from imgtools_mcp.server import build_server

    settings = Settings(model="auto", output_dir=tmp_path / "out", device="cpu", hf_offline=True)
    async with Client(build_server(settings)) as client:
        status = await client.call_tool("engine_status", {})
    assert not status.is_error, status.content[0].text
    assert status.structured_content["default_model"] == "stabilityai/sd-turbo"
    assert "on a CPU" in status.structured_content["default_model_reason"]
