"""Z-Image and Z-Image-Turbo (Tongyi-MAI): a single-stream 6B DiT conditioned on Qwen3-4B; txt2img, img2img, inpaint."""

from __future__ import annotations

from typing import Any

from .base import Component, FamilySpec, Variant
from .registry import register

GB = 10**9
FLOW_SAMPLERS = ("euler", "unipc", "dpmpp_2m")  # flow-match versions, built with the model's shift

def sized_inpaint_inputs(job: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
    """ZImageInpaintPipeline sizes the image and the mask differently unless both already have the output's size
    (a 72x56 image at 80x64 fails with a shape mismatch), so they are given at that size; the tool pastes the
    result back over the original outside the mask as for every family."""
    if job.mode != "inpaint":
        return kwargs
    size = (job.width, job.height)
    return {**kwargs, "image": kwargs["image"].resize(size), "mask_image": kwargs["mask_image"].resize(size)}


Z_IMAGE = register(
    FamilySpec(
        id="z-image",
        label="Z-Image",
        pipeline_classes=("ZImagePipeline", "ZImageImg2ImgPipeline", "ZImageInpaintPipeline"),
        denoiser="transformer",
        # The original single-file layout: refiner blocks around the main stack and a caption embedder.
        state_dict_markers=("noise_refiner.", "context_refiner.", "cap_embedder."),
        pipelines={
            "txt2img": "ZImagePipeline",
            "img2img": "ZImageImg2ImgPipeline",
            "inpaint": "ZImageInpaintPipeline",
            "instruct": None,
        },
        native_size=1024,
        # FLUX.1's 8x autoencoder and 2x2 patches.
        size_multiple=16,
        vae_scale_factor=8,
        latent_channels=16,
        default_steps=30,
        default_guidance=4.0,
        guidance_knob="cfg",
        negative_prompt=True,
        sampler_kind="flow",
        samplers=FLOW_SAMPLERS,
        token_limit=512,  # the pipelines' max_sequence_length
        variants=(
            # Turbo is distilled for 8 transformer passes without CFG; diffusers' 9 steps are those 8 passes
            # (the last sigma is 0). The turbo and base checkpoints share configs, so only the name tells them apart.
            Variant("turbo", "Turbo", name_markers=("turbo",), default_steps=9, default_guidance=0.0),
        ),
        call_kwargs=sized_inpaint_inputs,
        lora=True,
        lora_markers=("noise_refiner", "context_refiner", "feed_forward.w1", "feed_forward_w1"),
        backends=frozenset({"torch"}),
        components=(
            Component("transformer", int(12.3 * GB), "6B single-stream DiT"),
            Component("text_encoder", int(8.0 * GB), "Qwen3-4B"),
            Component("vae", int(0.17 * GB), "FLUX.1 autoencoder"),
        ),
    )
)
