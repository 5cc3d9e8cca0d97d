"""Tiny random-weight Z-Image and Z-Image-Turbo pipelines (Qwen3 text encoder), built from configs and saved by diffusers."""

from __future__ import annotations

from pathlib import Path

import torch

from . import register_builder
from .tiny_text import qwen_tokenizer

TEXT_HIDDEN = 16


def _build(folder: Path | str, seed: int) -> Path:
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, ZImagePipeline, ZImageTransformer2DModel
    from transformers import Qwen3Config, Qwen3Model

    folder = Path(folder)
    torch.manual_seed(seed)
    transformer = ZImageTransformer2DModel(
        all_patch_size=(2,), all_f_patch_size=(1,), in_channels=16, dim=32, n_layers=2, n_refiner_layers=1,
        n_heads=2, n_kv_heads=2, norm_eps=1e-5, qk_norm=True, cap_feat_dim=TEXT_HIDDEN, rope_theta=256.0,
        t_scale=1000.0, axes_dims=[8, 4, 4], axes_lens=[256, 32, 32],
    )
    with torch.no_grad():
        # Both pad tokens start as torch.empty (uninitialised memory): pin them so every build is the same model.
        transformer.x_pad_token.copy_(torch.ones_like(transformer.x_pad_token))
        transformer.cap_pad_token.copy_(torch.ones_like(transformer.cap_pad_token))
    torch.manual_seed(seed)
    # FLUX.1's autoencoder layout (four blocks: 8x, 16 latent channels) at the smallest widths it takes.
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4,
        block_out_channels=[8, 8, 8, 8], layers_per_block=1, latent_channels=16, norm_num_groups=4, sample_size=64,
        scaling_factor=0.3611, shift_factor=0.1159, use_quant_conv=False, use_post_quant_conv=False,
    )
    # Z-Image-Turbo's scheduler config: a fixed shift of 3, no resolution-dependent shift.
    scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=False)
    tokenizer = qwen_tokenizer()
    torch.manual_seed(seed)
    bos, eos = tokenizer.convert_tokens_to_ids(["<|endoftext|>", "<|im_end|>"])
    text_encoder = Qwen3Model(
        Qwen3Config(
            hidden_size=TEXT_HIDDEN, intermediate_size=16, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2,
            head_dim=8, vocab_size=len(tokenizer), max_position_embeddings=1024, bos_token_id=bos, eos_token_id=eos,
        )
    ).eval()
    pipe = ZImagePipeline(transformer=transformer, vae=vae, scheduler=scheduler, text_encoder=text_encoder, tokenizer=tokenizer)
    pipe.save_pretrained(folder, safe_serialization=True)
    return folder


def build_z_image(folder: Path | str, seed: int = 0) -> Path:
    """Z-Image (base): CFG with negative prompts, ~30-50 steps (img2img and inpaint load from the same folder)."""
    return _build(folder, seed)


def build_z_image_turbo(folder: Path | str, seed: int = 0) -> Path:
    """Z-Image-Turbo: the same layout and configs as Z-Image (as the real repos); the folder's name marks it turbo,
    so the folder should be named like the real one (e.g. `.../Z-Image-Turbo`)."""
    return _build(folder, seed)


register_builder("z-image", build_z_image)
register_builder("z-image-turbo", build_z_image_turbo)
