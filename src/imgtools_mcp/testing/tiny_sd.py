"""Tiny random-weight SD 1.x / SDXL (and SD 1.x inpainting) pipelines built from configs, for offline tests and demos."""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path

import torch

from . import register_builder

TEXT_HIDDEN = 32
SD_BUILDS = ("sd15", "sdxl", "sd15-inpaint")


def _byte_symbols() -> list[str]:
    """GPT-2/CLIP byte-level alphabet: each byte maps to a printable unicode character."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    codes = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            codes.append(256 + extra)
            extra += 1
    return [chr(code) for code in codes]


def write_clip_tokenizer(folder: Path) -> None:
    """A byte-level CLIP BPE vocabulary with no merges: every character is one token, built locally."""
    folder.mkdir(parents=True, exist_ok=True)
    symbols = _byte_symbols()
    vocab_tokens = symbols + [s + "</w>" for s in symbols] + ["<|startoftext|>", "<|endoftext|>"]
    vocab = {token: index for index, token in enumerate(vocab_tokens)}
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    (folder / "special_tokens_map.json").write_text(
        json.dumps({"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>", "unk_token": "<|endoftext|>"})
    )
    (folder / "tokenizer_config.json").write_text(
        json.dumps({"tokenizer_class": "CLIPTokenizer", "model_max_length": 77, "do_lower_case": True,
                    "bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>", "unk_token": "<|endoftext|>"})
    )


def _text_config(vocab_size: int, projection_dim: int | None = None):
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        bos_token_id=vocab_size - 2,
        eos_token_id=vocab_size - 1,
        pad_token_id=vocab_size - 1,
        hidden_size=TEXT_HIDDEN,
        intermediate_size=37,
        layer_norm_eps=1e-5,
        num_attention_heads=4,
        num_hidden_layers=2,
        vocab_size=vocab_size,
        projection_dim=projection_dim or TEXT_HIDDEN,
        hidden_act="gelu",
    )


def _make_vae_like_a_trained_one(vae) -> None:
    """Give the random VAE the two properties img2img and inpainting rely on in a trained one.

    A trained encoder's posterior is nearly a point (tiny variance), and `scaling_factor` brings
    its latents to unit variance, the scale the scheduler's noise levels assume. With random
    weights the variance is ~1 and the latents ~0.25, so any strength would drown the input.
    """
    import numpy as np

    latent_channels = vae.config.latent_channels
    with torch.no_grad():
        # quant_conv maps the encoder output to (mean, logvar); pin logvar at the distribution's floor.
        vae.quant_conv.weight[latent_channels:] = 0.0
        vae.quant_conv.bias[latent_channels:] = -30.0
        ramp = np.linspace(-1.0, 1.0, 64, dtype=np.float32)
        probe = torch.from_numpy(np.stack([ramp[None, :].repeat(64, 0), ramp[:, None].repeat(64, 1), np.zeros((64, 64), np.float32)]))
        mean = vae.encode(probe[None]).latent_dist.mean
    vae.register_to_config(scaling_factor=round(1.0 / float(mean.std()), 5))


def make_tiny_sd(folder: Path | str, family: str = "sd15", seed: int = 0) -> Path:
    """Write a tiny pipeline (64x64 native size) that loads through the same code path as a real model."""
    from diffusers import (
        AutoencoderKL,
        EulerDiscreteScheduler,
        StableDiffusionInpaintPipeline,
        StableDiffusionPipeline,
        StableDiffusionXLPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    folder = Path(folder)
    if family not in SD_BUILDS:
        raise ValueError(f"family: unknown {family!r}; allowed: {', '.join(SD_BUILDS)}")
    torch.manual_seed(seed)
    scheduler = EulerDiscreteScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", timestep_spacing="leading", steps_offset=1
    )
    vae = AutoencoderKL(
        block_out_channels=[16, 32],
        in_channels=3,
        out_channels=3,
        down_block_types=["DownEncoderBlock2D", "DownEncoderBlock2D"],
        up_block_types=["UpDecoderBlock2D", "UpDecoderBlock2D"],
        latent_channels=4,
        norm_num_groups=8,
        sample_size=64,
    )
    _make_vae_like_a_trained_one(vae)
    tok_dir = folder / "tokenizer"
    write_clip_tokenizer(tok_dir)
    tokenizer = CLIPTokenizer.from_pretrained(tok_dir)
    vocab_size = len(tokenizer)
    common_unet = dict(
        block_out_channels=(32, 64),
        layers_per_block=1,
        sample_size=32,
        # A dedicated inpainting UNet also takes the mask (1) and the masked image's latents (4).
        in_channels=9 if family == "sd15-inpaint" else 4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        norm_num_groups=16,
    )
    if family in ("sd15", "sd15-inpaint"):
        unet = UNet2DConditionModel(cross_attention_dim=TEXT_HIDDEN, attention_head_dim=8, **common_unet)
        text_encoder = CLIPTextModel(_text_config(vocab_size))
        pipeline_class = StableDiffusionInpaintPipeline if family == "sd15-inpaint" else StableDiffusionPipeline
        pipe = pipeline_class(
            vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
            safety_checker=None, feature_extractor=None, requires_safety_checker=False,
        )
    else:
        unet = UNet2DConditionModel(
            cross_attention_dim=2 * TEXT_HIDDEN,
            attention_head_dim=(2, 4),
            use_linear_projection=True,
            addition_embed_type="text_time",
            addition_time_embed_dim=8,
            transformer_layers_per_block=(1, 1),
            projection_class_embeddings_input_dim=6 * 8 + TEXT_HIDDEN,
            **common_unet,
        )
        text_encoder = CLIPTextModel(_text_config(vocab_size))
        text_encoder_2 = CLIPTextModelWithProjection(_text_config(vocab_size, projection_dim=TEXT_HIDDEN))
        pipe = StableDiffusionXLPipeline(
            vae=vae, text_encoder=text_encoder, text_encoder_2=text_encoder_2, tokenizer=tokenizer,
            tokenizer_2=tokenizer, unet=unet, scheduler=scheduler, force_zeros_for_empty_prompt=True,
        )
    pipe.save_pretrained(folder, safe_serialization=True)
    return folder


for _build in SD_BUILDS:
    register_builder(_build, partial(make_tiny_sd, family=_build))
