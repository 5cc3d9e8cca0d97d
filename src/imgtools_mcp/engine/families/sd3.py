"""Stable Diffusion 3 and 3.5 (medium, large, large-turbo): MMDiT with two CLIPs and T5-XXL."""

from __future__ import annotations

from .base import Component, FamilySpec, Variant
from .registry import register

GB = 10**9

SD3 = register(
    FamilySpec(
        id="sd3",
        label="SD 3/3.5",
        pipeline_classes=("StableDiffusion3Pipeline", "StableDiffusion3Img2ImgPipeline", "StableDiffusion3InpaintPipeline"),
        denoiser="transformer",
        denoiser_classes=("SD3Transformer2DModel",),
        priority=30,
        # The original MMDiT layout, or a transformer saved in diffusers' own layout (only SD3 patches with a conv).
        state_dict_markers=("joint_blocks.", "pos_embed.proj."),
        single_file_class="StableDiffusion3Pipeline",
        pipelines={
            "txt2img": "StableDiffusion3Pipeline",
            "img2img": "StableDiffusion3Img2ImgPipeline",
            "inpaint": "StableDiffusion3InpaintPipeline",
            "instruct": None,
        },
        native_size=1024,
        size_multiple=16,  # 8x VAE, 2x2 patches
        latent_channels=16,
        default_steps=28,
        default_guidance=4.5,
        guidance_knob="cfg",
        negative_prompt=True,
        sampler_kind="flow",
        samplers=("euler", "unipc"),
        token_limit=256,  # T5's sequence; the CLIPs read the first 77 tokens
        variants=(
            # large-turbo is adversarially distilled: 4 steps, no guidance.
            Variant("turbo", "Large Turbo", name_markers=("turbo",), default_steps=4, default_guidance=0.0),
        ),
        lora=True,
        lora_markers=("joint_blocks",),
        backends=frozenset({"torch"}),
        components=(
            Component("transformer", int(16.3 * GB), "SD 3.5 large, 8B MMDiT (medium: 5 GB)"),
            Component("text_encoder_3", int(9.5 * GB), "T5-XXL"),
            Component("text_encoder_2", int(1.39 * GB), "OpenCLIP ViT-bigG"),
            Component("text_encoder", int(0.25 * GB), "CLIP ViT-L"),
            Component("vae", int(0.17 * GB)),
        ),
    )
)
