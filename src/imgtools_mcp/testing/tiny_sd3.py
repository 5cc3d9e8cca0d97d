"""A tiny random-weight SD 3 pipeline (two CLIPs and a T5), built from configs and saved by diffusers."""

from __future__ import annotations

from pathlib import Path

import torch

from . import register_builder
from ._flow_parts import CLIP_HIDDEN, clip_encoder, clip_tokenizer, flow_scheduler, flow_vae, t5_encoder, t5_tokenizer

LATENT = 16  # SD3's inpaint pipeline insists on the real 16 latent channels
T5_WIDTH = 2 * CLIP_HIDDEN  # SD3 pads the two CLIPs' joined hidden states to T5's width


def make_tiny_sd3(folder: Path, seed: int = 0, *, num_layers: int = 1) -> Path:
    """`num_layers` 2 or more for ControlNet tests: SD3 adds ControlNet residuals to every block but the last."""
    from diffusers import SD3Transformer2DModel, StableDiffusion3Pipeline

    folder = Path(folder)
    torch.manual_seed(seed)
    tokenizer, tokenizer_3 = clip_tokenizer(), t5_tokenizer()
    transformer = SD3Transformer2DModel(
        sample_size=8, patch_size=2, in_channels=LATENT, out_channels=LATENT, num_layers=num_layers, attention_head_dim=8,
        num_attention_heads=4, joint_attention_dim=T5_WIDTH, caption_projection_dim=32,
        pooled_projection_dim=2 * CLIP_HIDDEN, pos_embed_max_size=32,
    )
    pipe = StableDiffusion3Pipeline(
        transformer=transformer, scheduler=flow_scheduler(dynamic=False, shift=3.0), vae=flow_vae(LATENT),
        text_encoder=clip_encoder(tokenizer, with_projection=True), tokenizer=tokenizer,
        text_encoder_2=clip_encoder(tokenizer, with_projection=True), tokenizer_2=tokenizer,
        text_encoder_3=t5_encoder(len(tokenizer_3), hidden=T5_WIDTH), tokenizer_3=tokenizer_3,
    )
    pipe.save_pretrained(folder, safe_serialization=True)
    return folder


register_builder("sd3", make_tiny_sd3)
