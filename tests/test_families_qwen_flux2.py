"""Qwen-Image(-Edit), Z-Image(-Turbo) and FLUX.2 (dev, klein) through the MCP client, from folders diffusers saved itself."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from mcp import Client
from PIL import Image

from imgtools_mcp.config import Settings
from imgtools_mcp.engine import families
from imgtools_mcp.server import build_server
from imgtools_mcp.testing import make_test_model

pytestmark = pytest.mark.anyio

# Folder names as the real hub repos are named: Z-Image-Turbo is told from Z-Image by its name only.
FOLDERS = {
    "qwen-image": "Qwen-Image",
    "qwen-image-edit": "Qwen-Image-Edit-2509",
    "qwen-image-edit-1": "Qwen-Image-Edit",
    "z-image": "Z-Image",
    "z-image-turbo": "Z-Image-Turbo",
    "flux2": "FLUX.2-dev",
    "flux2-klein": "FLUX.2-klein-4B",
}
FAST = {"width": 64, "height": 64, "steps": 2}


@pytest.fixture(scope="module")
def dit_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("dit-models")
    return {family: make_test_model(root / folder, family) for family, folder in FOLDERS.items()}


def settings_for(tmp_path: Path, model: Path, **extra) -> Settings:
    return Settings(model=str(model), output_dir=tmp_path / "out", device="cpu", hf_offline=True, **extra)


def ok(result) -> dict:
    assert not result.is_error, result.content[0].text
    return result.structured_content


def pixels(info: dict) -> np.ndarray:
    return np.asarray(Image.open(info["path"]).convert("RGB"), dtype=np.int16)


def pattern(seed: int, size: tuple[int, int] = (64, 64)) -> Image.Image:
    rng = np.random.default_rng(seed)
    # Smooth colour fields rather than noise, like a photo: a VAE keeps them recognisable.
    small = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
    return Image.fromarray(small).resize(size, Image.Resampling.BICUBIC)


def data_url(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


# ----- recognition: from the files diffusers wrote, nothing loaded -----

EXPECTED = {
    # family id, variant, default steps, default guidance, guidance knob, instruction edits
    "qwen-image": ("qwen-image", None, 50, 4.0, "true_cfg", False),
    "qwen-image-edit": ("qwen-image-edit", None, 40, 4.0, "true_cfg", True),
    "qwen-image-edit-1": ("qwen-image-edit-1", None, 50, 4.0, "true_cfg", True),
    "z-image": ("z-image", None, 30, 4.0, "cfg", False),
    "z-image-turbo": ("z-image", "turbo", 9, 0.0, "cfg", False),
    "flux2": ("flux2", None, 50, 4.0, "distilled", True),
    "flux2-klein": ("flux2-klein", "distilled", 4, 1.0, "cfg", True),
}


@pytest.mark.parametrize("family", sorted(FOLDERS))
def test_saved_folders_are_recognised_from_their_files(dit_models: dict[str, Path], family: str) -> None:
    info = families.detect_folder(dit_models[family])
    variant = info.variant.id if info.variant else None
    spec = info.family
    assert (spec.id, variant, info.default_steps, info.default_guidance, spec.guidance_knob, spec.instruct) == EXPECTED[family]
    assert spec.size_multiple == 16 and spec.sampler_kind == "flow" and spec.lora
    index = json.loads((dit_models[family] / "model_index.json").read_text())
    assert index["_class_name"] in spec.pipeline_classes


# Generate (same seed, infotext, progress, sweep, cancel) and inpaint (exact outside the mask) run for these families in
# tests/test_families_contract.py; this file covers what only they have: reference images, edit-only models, LoRA layouts.


# ----- instruction edits: the image and references are the model's inputs, strength does not apply -----


@pytest.mark.parametrize("family", ["qwen-image-edit", "flux2", "flux2-klein"])
async def test_instruction_edit_takes_reference_images_and_ignores_strength(
    tmp_path: Path, dit_models: dict[str, Path], family: str
) -> None:
    image, reference = data_url(pattern(2)), data_url(pattern(3))
    edit = {"prompt": "make the sky purple", "image": image, "seed": 4, "strength": 0.3, **FAST}
    async with Client(build_server(settings_for(tmp_path, dit_models[family]))) as client:
        alone = ok(await client.call_tool("edit", edit))
        referenced = ok(await client.call_tool("edit", {**edit, "reference_images": [{"image": reference, "weight": 1.0}]}))
    assert alone["model"]["family"] == EXPECTED[family][0]
    notes = " ".join(alone.get("warnings", []) + alone.get("notes", []))
    assert "strength does not apply" in notes
    assert not np.array_equal(pixels(alone["images"][0]), pixels(referenced["images"][0]))


# ----- LoRA: on changes the image, off gives the plain image back pixel for pixel -----

LORA_TARGETS = {
    # img_mlp and the refiners are names only these families' transformers have, so the file says its family.
    "qwen-image": ["to_q", "to_k", "to_v", "img_mlp.net.2"],
    "z-image": ["to_q", "to_k", "to_v", "w1"],
    # FLUX.2's fused single-block projection: a FLUX.2 LoRA also has FLUX.1's block names, and must not be taken for one.
    "flux2-klein": ["to_q", "to_k", "to_v", "to_qkv_mlp_proj"],
}


def make_transformer_lora(model: Path, out_file: Path, targets: list[str], seed: int = 1) -> Path:
    """A LoRA on the tiny transformer, saved by the family's own pipeline class (diffusers' LoRA file layout)."""
    import diffusers
    from peft import LoraConfig, get_peft_model_state_dict

    index = json.loads((model / "model_index.json").read_text())
    transformer_class = getattr(diffusers, index["transformer"][1])
    torch.manual_seed(seed)
    transformer = transformer_class.from_pretrained(model / "transformer")
    # init_lora_weights=False draws lora_B at random, so the adapter really changes the image.
    transformer.add_adapter(LoraConfig(r=4, lora_alpha=4, target_modules=targets, init_lora_weights=False))
    pipeline_class = getattr(diffusers, index["_class_name"])
    out_file.parent.mkdir(parents=True, exist_ok=True)
    pipeline_class.save_lora_weights(
        out_file.parent, transformer_lora_layers=get_peft_model_state_dict(transformer), weight_name=out_file.name
    )
    return out_file


@pytest.mark.parametrize("family", sorted(LORA_TARGETS))
async def test_lora_on_changes_the_image_and_off_restores_it(tmp_path: Path, dit_models: dict[str, Path], family: str) -> None:
    lora_dir = tmp_path / "loras"
    make_transformer_lora(dit_models[family], lora_dir / "tiny_style.safetensors", LORA_TARGETS[family])
    request = {"prompt": "a lighthouse at dusk", "seed": 7, **FAST}
    async with Client(build_server(settings_for(tmp_path, dit_models[family], lora_dirs=[lora_dir]))) as client:
        plain = ok(await client.call_tool("generate", request))
        styled = ok(await client.call_tool("generate", {**request, "loras": [{"name": "tiny_style", "weight": 1.0}]}))
        after = ok(await client.call_tool("generate", request))
    assert styled["parameters"]["loras"] == [{"name": "tiny_style", "weight": 1.0}]
    assert np.abs(pixels(styled["images"][0]) - pixels(plain["images"][0])).max() > 0
    assert np.array_equal(pixels(after["images"][0]), pixels(plain["images"][0]))


# Z-Image (base) is in no other test's list: it runs here.
@pytest.mark.parametrize("family", ["qwen-image", "z-image"])
async def test_edit_with_a_model_that_has_no_instruction_mode_is_img2img(
    tmp_path: Path, dit_models: dict[str, Path], family: str
) -> None:
    source = pattern(5)
    async with Client(build_server(settings_for(tmp_path, dit_models[family]))) as client:
        edited = ok(await client.call_tool("edit", {"prompt": "at night", "image": data_url(source), "strength": 0.5, "seed": 2, **FAST}))
    out = pixels(edited["images"][0])
    assert out.shape == (64, 64, 3)  # the requested size, not the family's native 1024
    assert edited["parameters"]["strength"] == 0.5
    assert "strength does not apply" not in " ".join(edited.get("warnings", []) + edited.get("notes", []))


async def test_an_edit_only_model_refuses_generate_and_too_many_references_by_name(
    tmp_path: Path, dit_models: dict[str, Path]
) -> None:
    image = data_url(pattern(6))
    async with Client(build_server(settings_for(tmp_path, dit_models["qwen-image-edit"]))) as client:
        generated = await client.call_tool("generate", {"prompt": "a cat", **FAST})
        crowded = await client.call_tool("edit", {
            "prompt": "put them together", "image": image, **FAST,
            "reference_images": [{"image": image, "weight": 1.0}] * 3,
        })
    assert generated.is_error and "text-to-image" in generated.content[0].text and "Qwen-Image" in generated.content[0].text
    message = crowded.content[0].text
    assert crowded.is_error and "reference_images" in message and "at most 2" in message
    assert "\n" not in message.strip()


def test_single_files_are_told_from_sd_by_their_tensor_names() -> None:
    qwen = {"model.diffusion_model.transformer_blocks.0.img_mod.1.weight", "model.diffusion_model.img_in.weight"}
    z_image = {"noise_refiner.0.attention.qkv.weight", "cap_embedder.1.weight", "layers.0.feed_forward.w1.weight"}
    flux1 = {"double_blocks.0.img_mod.lin.weight", "single_blocks.0.linear1.weight"}
    assert families.family_from_state_dict_keys(qwen, "qwen_image_fp8").family.id == "qwen-image"
    assert families.family_from_state_dict_keys(z_image, "z_image_turbo_bf16").variant.id == "turbo"
    assert families.family_from_state_dict_keys(flux1, "flux1-dev").family.id == "flux"


async def test_a_lora_of_another_family_is_refused_naming_both(tmp_path: Path, dit_models: dict[str, Path]) -> None:
    lora_dir = tmp_path / "loras"
    make_transformer_lora(dit_models["qwen-image"], lora_dir / "qwen_style.safetensors", LORA_TARGETS["qwen-image"])
    make_transformer_lora(dit_models["flux2-klein"], lora_dir / "klein_style.safetensors", LORA_TARGETS["flux2-klein"])
    request = {"prompt": "a cat", "seed": 1, **FAST}
    async with Client(build_server(settings_for(tmp_path, dit_models["z-image-turbo"], lora_dirs=[lora_dir]))) as client:
        qwen_on_z = await client.call_tool("generate", {**request, "loras": [{"name": "qwen_style"}]})
        klein_on_z = await client.call_tool("generate", {**request, "loras": [{"name": "klein_style"}]})
    for result, label in ((qwen_on_z, "Qwen-Image LoRA"), (klein_on_z, "FLUX.2")):
        message = result.content[0].text
        assert result.is_error and "loras:" in message and label in message and "Z-Image" in message, message


def test_flux2_dev_folder_files_its_tokenizer_as_the_real_repo_does(dit_models: dict[str, Path]) -> None:
    # The real repo's tokenizer/ is a Pixtral processor (torchvision-only in transformers 5); the generate and edit
    # tests above load this folder through the engine, so they show the family loads it without torchvision.
    index = json.loads((dit_models["flux2"] / "model_index.json").read_text())
    assert index["tokenizer"] == ["transformers", "PixtralProcessor"]
    assert (dit_models["flux2"] / "tokenizer" / "processor_config.json").is_file()
