"""A tiny random-weight Chroma pipeline (T5 only), built from configs and saved by diffusers."""

from __future__ import annotations

from pathlib import Path

import torch

from . import register_builder
from ._flow_parts import T5_HIDDEN, flow_scheduler, flow_vae, t5_encoder, t5_tokenizer

LATENT = 4


def make_tiny_chroma(folder: Path, seed: int = 0) -> Path:
    from diffusers import ChromaPipeline, ChromaTransformer2DModel

    folder = Path(folder)
    torch.manual_seed(seed)
    tokenizer = t5_tokenizer()
    transformer = ChromaTransformer2DModel(
        patch_size=1, in_channels=4 * LATENT, out_channels=4 * LATENT, num_layers=1, num_single_layers=1,
        attention_head_dim=16, num_attention_heads=2, joint_attention_dim=T5_HIDDEN, axes_dims_rope=(4, 6, 6),
        approximator_num_channels=16, approximator_hidden_dim=32, approximator_layers=1,
    )
    pipe = ChromaPipeline(
        scheduler=flow_scheduler(dynamic=True), vae=flow_vae(LATENT), text_encoder=t5_encoder(len(tokenizer)),
        tokenizer=tokenizer, transformer=transformer,
    )
    pipe.save_pretrained(folder, safe_serialization=True)
    return folder


register_builder("chroma", make_tiny_chroma)
