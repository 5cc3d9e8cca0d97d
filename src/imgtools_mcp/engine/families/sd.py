"""Stable Diffusion 1.x, 2.x and SDXL (UNet families), with their turbo, lightning, LCM and hyper variants."""

from __future__ import annotations

from .base import Component, Configs, FamilySpec, Variant
from .registry import register

GB = 10**9
DISCRETE_SAMPLERS = ("euler", "euler_a", "dpmpp_2m", "dpmpp_2m_karras", "ddim", "unipc", "lcm")
UNET_BACKENDS = frozenset({"torch", "openvino"})
CHECKPOINT_IN_KEY = "model.diffusion_model.input_blocks.0.0.weight"


def _distilled(variant_id: str, label: str, *markers: str) -> Variant:
    # Distilled models (turbo, lightning, LCM, hyper) are trained for 1-4 steps without classifier-free guidance.
    return Variant(variant_id, label, name_markers=markers, default_steps=4, default_guidance=0.0)


# Name markers, most specific first: "sdxl-lightning-4step" is a lightning model.
SD_VARIANTS = (
    _distilled("lightning", "Lightning", "lightning"),
    _distilled("lcm", "LCM", "lcm"),
    _distilled("hyper", "Hyper-SD", "hyper"),
    _distilled("turbo", "Turbo", "turbo", "schnell", "1step", "2step", "4step"),
)


def _cross_dim(configs: Configs) -> int | None:
    cross_dim = configs.get("unet", {}).get("cross_attention_dim")
    if isinstance(cross_dim, list | tuple):
        cross_dim = max(cross_dim)
    return cross_dim


def _is_xl(configs: Configs) -> bool:
    cls = str(configs.get("model_index", {}).get("_class_name", ""))
    return "XL" in cls or configs.get("unet", {}).get("addition_embed_type") == "text_time"


_SD_CLASSES = (
    "StableDiffusionPipeline",
    "StableDiffusionImg2ImgPipeline",
    "StableDiffusionInpaintPipeline",
)
_COMMON = dict(
    denoiser="unet",
    denoiser_classes=("UNet2DConditionModel",),
    size_multiple=8,
    vae_scale_factor=8,
    latent_channels=4,
    sampler_kind="discrete",
    samplers=DISCRETE_SAMPLERS,
    token_limit=77,
    variants=SD_VARIANTS,
    backends=UNET_BACKENDS,
    inpainting_in_channels=9,
    state_dict_in_key=CHECKPOINT_IN_KEY,
    guidance_knob="cfg",
    negative_prompt=True,
)

# SD 1.x and 2.x run through the same pipelines; only their text encoders and native sizes differ.
_SD_PIPELINES = {
    "txt2img": "StableDiffusionPipeline",
    "img2img": "StableDiffusionImg2ImgPipeline",
    "inpaint": "StableDiffusionInpaintPipeline",
    "instruct": None,
}

SD1 = register(
    FamilySpec(
        id="sd1",
        label="SD 1.x",
        pipeline_classes=_SD_CLASSES,
        recognise=lambda configs: not _is_xl(configs) and _cross_dim(configs) != 1024,
        priority=0,
        state_dict_fallback=True,
        single_file_class="StableDiffusionPipeline",
        pipelines=dict(_SD_PIPELINES),
        native_size=512,
        default_steps=25,
        default_guidance=7.0,
        lora_context_dim=768,
        components=(
            Component("unet", int(1.72 * GB)),
            Component("text_encoder", int(0.25 * GB), "CLIP ViT-L"),
            Component("vae", int(0.17 * GB)),
        ),
        activation_shape="sd1",
        **_COMMON,
    )
)

SD2 = register(
    FamilySpec(
        id="sd2",
        label="SD 2.x",
        pipeline_classes=_SD_CLASSES,
        recognise=lambda configs: not _is_xl(configs) and _cross_dim(configs) == 1024,
        priority=10,
        state_dict_markers=("cond_stage_model.model.",),
        single_file_class="StableDiffusionPipeline",
        pipelines=dict(_SD_PIPELINES),
        native_size=768,
        default_steps=25,
        default_guidance=7.0,
        lora_context_dim=1024,
        components=(
            Component("unet", int(1.73 * GB)),
            Component("text_encoder", int(0.68 * GB), "OpenCLIP ViT-H"),
            Component("vae", int(0.17 * GB)),
        ),
        activation_shape="sd2",
        **_COMMON,
    )
)

SDXL = register(
    FamilySpec(
        id="sdxl",
        label="SDXL",
        pipeline_classes=(
            "StableDiffusionXLPipeline",
            "StableDiffusionXLImg2ImgPipeline",
            "StableDiffusionXLInpaintPipeline",
        ),
        recognise=_is_xl,
        priority=20,
        state_dict_markers=("conditioner.embedders.1",),
        single_file_class="StableDiffusionXLPipeline",
        pipelines={
            "txt2img": "StableDiffusionXLPipeline",
            "img2img": "StableDiffusionXLImg2ImgPipeline",
            "inpaint": "StableDiffusionXLInpaintPipeline",
            "instruct": None,
        },
        native_size=1024,
        default_steps=30,
        default_guidance=5.0,
        lora_context_dim=2048,
        # A LoRA that touches the second text encoder is an SDXL LoRA.
        lora_markers=("text_encoder_2.", "lora_te2_"),
        components=(
            Component("unet", int(5.14 * GB)),
            Component("text_encoder", int(0.25 * GB), "CLIP ViT-L"),
            Component("text_encoder_2", int(1.39 * GB), "OpenCLIP ViT-bigG"),
            Component("vae", int(0.17 * GB)),
        ),
        activation_shape="sdxl",
        **_COMMON,
    )
)
