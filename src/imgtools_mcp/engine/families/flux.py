"""FLUX.1 (dev and schnell), FLUX.1 Kontext (instruction edit) and FLUX.1 Fill (inpaint/outpaint): one transformer layout."""

from __future__ import annotations

from typing import Any

from .base import Component, Configs, FamilySpec, Variant
from .registry import register

GB = 10**9
FLOW_SAMPLERS = ("euler", "unipc")
FLUX_CLASSES = ("FluxPipeline", "FluxImg2ImgPipeline", "FluxInpaintPipeline")
# Tensor names of the original (BFL) layout, as single files and GGUF transformers carry them.
FLUX_STATE_DICT = ("double_blocks.", "single_blocks.", "single_transformer_blocks.")
FLUX_LORA_MARKERS = ("single_transformer_blocks", "lora_unet_single_blocks", "lora_unet_double_blocks", "double_blocks.")
FLUX_COMPONENTS = (
    Component("transformer", int(23.8 * GB), "12B MMDiT"),
    Component("text_encoder_2", int(9.5 * GB), "T5-XXL"),
    Component("text_encoder", int(0.25 * GB), "CLIP ViT-L"),
    Component("vae", int(0.17 * GB)),
)


def _fill_shaped(configs: Configs) -> bool:
    """A Fill transformer reads the masked image's latents and the mask besides the noisy latents."""
    latent = configs.get("vae", {}).get("latent_channels", 16)
    in_channels = configs.get("transformer", {}).get("in_channels", 4 * latent)
    return in_channels > 4 * latent


def _kontext_call(job: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
    """Kontext would rescale the output to a megapixel and the input to its preferred sizes; keep the asked size."""
    if "image" in kwargs or job.mode == "txt2img":
        kwargs.update(max_area=job.width * job.height, _auto_resize=False)
    return kwargs


def _no_guidance_embedding(configs: Configs) -> bool:
    return configs.get("transformer", {}).get("guidance_embeds") is False


_COMMON = dict(
    denoiser="transformer",
    native_size=1024,
    size_multiple=16,
    vae_scale_factor=8,
    latent_channels=16,
    sampler_kind="flow",
    samplers=FLOW_SAMPLERS,
    token_limit=512,
    # FLUX.1 was distilled to take guidance as an input (one pass, no negative prompt).
    guidance_knob="distilled",
    negative_prompt=False,
    lora=True,
    lora_layout="flux",
    backends=frozenset({"torch"}),
    components=FLUX_COMPONENTS,
)

FLUX = register(
    FamilySpec(
        id="flux",
        label="FLUX.1",
        pipeline_classes=FLUX_CLASSES,
        recognise=lambda configs: not _fill_shaped(configs),
        priority=30,
        state_dict_markers=FLUX_STATE_DICT,
        single_file_class="FluxPipeline",
        pipelines={
            "txt2img": "FluxPipeline",
            "img2img": "FluxImg2ImgPipeline",
            "inpaint": "FluxInpaintPipeline",
            "instruct": None,
        },
        default_steps=28,
        default_guidance=3.5,
        variants=(
            # schnell is timestep-distilled: no guidance embedding, 1-4 steps, a 256-token T5 context.
            Variant("schnell", "schnell", name_markers=("schnell",), detect=_no_guidance_embedding,
                    default_steps=4, default_guidance=0.0, token_limit=256),
        ),
        lora_markers=FLUX_LORA_MARKERS,
        **_COMMON,
    )
)

FLUX_KONTEXT = register(
    FamilySpec(
        id="flux-kontext",
        label="FLUX.1 Kontext",
        pipeline_classes=("FluxKontextPipeline", "FluxKontextInpaintPipeline"),
        priority=40,
        pipelines={
            # Without an image Kontext generates from text like FLUX.1 dev.
            "txt2img": "FluxKontextPipeline",
            "img2img": None,
            "inpaint": "FluxKontextInpaintPipeline",
            "instruct": "FluxKontextPipeline",
        },
        default_steps=28,
        default_guidance=2.5,
        max_reference_images=0,
        call_kwargs=_kontext_call,
        **_COMMON,
    )
)

FLUX_FILL = register(
    FamilySpec(
        id="flux-fill",
        label="FLUX.1 Fill",
        pipeline_classes=("FluxFillPipeline", *FLUX_CLASSES),
        recognise=lambda configs: configs.get("model_index", {}).get("_class_name") == "FluxFillPipeline" or _fill_shaped(configs),
        priority=40,
        pipelines={"txt2img": None, "img2img": None, "inpaint": "FluxFillPipeline", "instruct": None},
        default_steps=50,
        default_guidance=30.0,
        **_COMMON,
    )
)
