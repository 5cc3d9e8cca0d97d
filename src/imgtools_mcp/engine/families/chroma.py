"""Chroma: a FLUX.1 schnell derivative with real classifier-free guidance and T5-XXL only."""

from __future__ import annotations

from .base import Component, FamilySpec
from .registry import register

GB = 10**9

def _after_load(pipe) -> None:
    # diffusers' Chroma inpaint pipeline reads `guidance_embeds`, which Chroma's transformer config does not have.
    transformer = getattr(pipe, "transformer", None)
    if transformer is not None and "guidance_embeds" not in transformer.config:
        transformer.register_to_config(guidance_embeds=False)


CHROMA = register(
    FamilySpec(
        id="chroma",
        label="Chroma",
        pipeline_classes=("ChromaPipeline", "ChromaImg2ImgPipeline", "ChromaInpaintPipeline"),
        denoiser="transformer",
        denoiser_classes=("ChromaTransformer2DModel",),
        priority=35,
        # Tried before FLUX.1 (same block names): only Chroma has the distilled guidance approximator.
        state_dict_markers=("distilled_guidance_layer.",),
        pipelines={
            "txt2img": "ChromaPipeline",
            "img2img": "ChromaImg2ImgPipeline",
            "inpaint": "ChromaInpaintPipeline",
            "instruct": None,
        },
        native_size=1024,
        size_multiple=16,
        latent_channels=16,
        default_steps=35,
        default_guidance=5.0,
        guidance_knob="cfg",
        negative_prompt=True,
        sampler_kind="flow",
        samplers=("euler", "unipc"),
        token_limit=512,
        lora=True,
        # Chroma keeps FLUX.1's block names, and FLUX.1 LoRAs are commonly used on it.
        lora_layout="flux",
        after_load=_after_load,
        backends=frozenset({"torch"}),
        components=(
            Component("transformer", int(17.8 * GB), "8.9B (FLUX.1 schnell pruned)"),
            Component("text_encoder", int(9.5 * GB), "T5-XXL"),
            Component("vae", int(0.17 * GB)),
        ),
    )
)
