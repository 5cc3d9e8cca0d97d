"""Qwen-Image (text to image, img2img, inpaint) and Qwen-Image-Edit / Edit-Plus (instruction edits), Qwen2.5-VL conditioned."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

from .base import Component, FamilySpec
from .registry import register

GB = 10**9
FLOW_SAMPLERS = ("euler", "unipc", "dpmpp_2m")  # flow-match versions, built with the model's shift

@functools.cache
def still_image_processor_class() -> type:
    """Qwen2-VL's processor for still images only, built on first use (importing transformers' processors takes ~2 s).

    transformers 5 builds the processor's video part from torchvision, which this project does not need
    otherwise; instruction edits never pass video, so the edit pipelines get this processor instead.
    """
    from transformers import Qwen2VLProcessor

    class StillImageQwen2VLProcessor(Qwen2VLProcessor):  # type: ignore[misc,valid-type]
        @classmethod
        def get_attributes(cls) -> list[str]:
            return ["image_processor", "tokenizer"]

    return StillImageQwen2VLProcessor


def edit_processor(folder: Path, dtype: Any) -> dict[str, Any]:
    """from_pretrained overrides for Qwen-Image-Edit folders: their processor, loaded without a video processor."""
    del dtype  # a processor has no weights
    processor_dir = Path(folder) / "processor"
    if not processor_dir.is_dir():
        return {}
    return {"processor": still_image_processor_class().from_pretrained(str(processor_dir))}


def true_cfg_call(job: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
    """Qwen-Image's guidance is `true_cfg_scale`, and it only runs with a negative prompt (" " when none is given)."""
    kwargs = dict(kwargs)
    scale = kwargs.pop("guidance_scale", None)
    if scale is None:
        scale = job.guidance_scale
    kwargs["true_cfg_scale"] = scale
    # `guidance_scale` is only for guidance-distilled Qwen transformers (none released); leave it unset.
    if scale > 1 and not kwargs.get("negative_prompt"):
        kwargs["negative_prompt"] = " "
    if job.mode == "img2img":
        # Qwen-Image's img2img sizes its output by width/height (default 1024), not by the input image.
        kwargs.setdefault("width", job.width)
        kwargs.setdefault("height", job.height)
    return kwargs


# Qwen2.5-VL-7B in bf16 is the biggest text encoder of any family after FLUX.2 dev's Mistral.
_COMPONENTS = (
    Component("transformer", int(40.9 * GB), "20B MMDiT"),
    Component("text_encoder", int(16.6 * GB), "Qwen2.5-VL-7B"),
    Component("vae", int(0.25 * GB), "Qwen-Image VAE (Wan 2.1 layout)"),
)
_COMMON: dict[str, Any] = dict(
    denoiser="transformer",
    denoiser_classes=(),
    native_size=1024,  # 1328x1328 is its top training size; 1024 keeps a default run within the usual budgets
    # The VAE downsamples 8x and the transformer packs 2x2 latent patches.
    size_multiple=16,
    vae_scale_factor=8,
    latent_channels=16,
    guidance_knob="true_cfg",  # true CFG: two passes, only with a negative prompt and true_cfg_scale > 1
    negative_prompt=True,
    sampler_kind="flow",
    samplers=FLOW_SAMPLERS,
    token_limit=1024,  # the pipelines' tokenizer_max_length
    lora=True,
    lora_markers=("img_mlp", "txt_mlp", "img_mod", "txt_mod"),
    # Edit and Edit-Plus share Qwen-Image's transformer: its LoRAs load into both (and a LoRA file, whose names
    # are the same for all three, is reported as a Qwen-Image LoRA: that family sorts first).
    lora_layout="qwen-image",
    backends=frozenset({"torch"}),
    components=_COMPONENTS,
)

QWEN_IMAGE = register(
    FamilySpec(
        id="qwen-image",
        label="Qwen-Image",
        pipeline_classes=("QwenImagePipeline", "QwenImageImg2ImgPipeline", "QwenImageInpaintPipeline"),
        # Single files (ComfyUI's layout) carry diffusers' own block names; FLUX.1's original layout says
        # img_mod.lin instead, and FLUX.1 is tried first. The Edit models share these names: a file is taken as Qwen-Image.
        state_dict_markers=("img_mod.1.", "txt_mod.1."),
        pipelines={
            "txt2img": "QwenImagePipeline",
            "img2img": "QwenImageImg2ImgPipeline",
            "inpaint": "QwenImageInpaintPipeline",
            "instruct": None,
        },
        default_steps=50,
        default_guidance=4.0,
        call_kwargs=true_cfg_call,
        **_COMMON,
    )
)

# Edit-Plus (2509, 2511): the instruction plus up to three images, all seen by the VL encoder and the VAE.
QWEN_IMAGE_EDIT = register(
    FamilySpec(
        id="qwen-image-edit",
        label="Qwen-Image-Edit-Plus",
        pipeline_classes=("QwenImageEditPlusPipeline",),
        pipelines={"txt2img": None, "img2img": None, "inpaint": None, "instruct": "QwenImageEditPlusPipeline"},
        default_steps=40,
        default_guidance=4.0,
        max_reference_images=2,  # besides `image`: three pictures in all
        load_overrides=edit_processor,
        call_kwargs=true_cfg_call,
        **_COMMON,
    )
)

# The first Qwen-Image-Edit (one input image); diffusers also has an edit-inpaint pipeline for it.
QWEN_IMAGE_EDIT_FIRST = register(
    FamilySpec(
        id="qwen-image-edit-1",
        label="Qwen-Image-Edit (first release)",
        pipeline_classes=("QwenImageEditPipeline", "QwenImageEditInpaintPipeline"),
        pipelines={
            "txt2img": None,
            "img2img": None,
            "inpaint": "QwenImageEditInpaintPipeline",
            "instruct": "QwenImageEditPipeline",
        },
        default_steps=50,
        default_guidance=4.0,
        max_reference_images=0,
        load_overrides=edit_processor,
        call_kwargs=true_cfg_call,
        **_COMMON,
    )
)
