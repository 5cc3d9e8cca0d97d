"""Tiny random-weight FLUX.1 dev, schnell, Kontext and Fill pipelines, built from configs and saved by diffusers."""

from __future__ import annotations

from pathlib import Path

import torch

from . import register_builder
from ._flow_parts import CLIP_HIDDEN, T5_HIDDEN, clip_encoder, clip_tokenizer, flow_scheduler, flow_vae, t5_encoder, t5_tokenizer

LATENT = 4  # the real VAE has 16; packing 2x2 patches makes the transformer's input 4x that


def _transformer(*, guidance: bool, in_channels: int = 4 * LATENT):
    from diffusers import FluxTransformer2DModel

    return FluxTransformer2DModel(
        patch_size=1, in_channels=in_channels, out_channels=4 * LATENT, num_layers=1, num_single_layers=1,
        attention_head_dim=16, num_attention_heads=2, joint_attention_dim=T5_HIDDEN,
        pooled_projection_dim=CLIP_HIDDEN, guidance_embeds=guidance, axes_dims_rope=(4, 6, 6),
    )


def _build(folder: Path, seed: int, kind: str) -> Path:
    import diffusers

    torch.manual_seed(seed)
    tokenizer, tokenizer_2 = clip_tokenizer(), t5_tokenizer()
    vae = flow_vae(LATENT)
    # Fill reads, besides the noisy latents, the masked image's latents and the mask packed per latent pixel.
    in_channels = 2 * 4 * LATENT + 4 * 8 * 8 if kind == "fill" else 4 * LATENT
    transformer = _transformer(guidance=kind != "schnell", in_channels=in_channels)
    cls = {"dev": "FluxPipeline", "schnell": "FluxPipeline", "kontext": "FluxKontextPipeline", "fill": "FluxFillPipeline"}[kind]
    pipe = getattr(diffusers, cls)(
        scheduler=flow_scheduler(dynamic=kind != "schnell", shift=1.0 if kind == "schnell" else 3.0),
        vae=vae, text_encoder=clip_encoder(tokenizer), tokenizer=tokenizer,
        text_encoder_2=t5_encoder(len(tokenizer_2)), tokenizer_2=tokenizer_2, transformer=transformer,
    )
    pipe.save_pretrained(folder, safe_serialization=True)
    return folder


def make_tiny_flux(folder: Path, seed: int = 0) -> Path:
    return _build(Path(folder), seed, "dev")


def make_tiny_flux_schnell(folder: Path, seed: int = 0) -> Path:
    return _build(Path(folder), seed, "schnell")


def make_tiny_flux_kontext(folder: Path, seed: int = 0) -> Path:
    return _build(Path(folder), seed, "kontext")


def make_tiny_flux_fill(folder: Path, seed: int = 0) -> Path:
    return _build(Path(folder), seed, "fill")


register_builder("flux", make_tiny_flux)
register_builder("flux-schnell", make_tiny_flux_schnell)
register_builder("flux-kontext", make_tiny_flux_kontext)
register_builder("flux-fill", make_tiny_flux_fill)


def make_tiny_flux_lora(model_folder: Path | str, out_file: Path | str, *, seed: int = 0, rank: int = 4) -> Path:
    """A LoRA on a tiny FLUX-layout transformer's attention, in diffusers/peft format, with random non-zero up weights."""
    import json

    import diffusers
    from peft import LoraConfig, get_peft_model_state_dict

    model_folder, out_file = Path(model_folder), Path(out_file)
    index = json.loads((model_folder / "model_index.json").read_text())
    transformer_class = getattr(diffusers, index["transformer"][1])
    torch.manual_seed(seed)
    transformer = transformer_class.from_pretrained(model_folder / "transformer")
    # peft initialises lora_B to zero (a no-op adapter); init_lora_weights=False draws it at random.
    transformer.add_adapter(
        LoraConfig(r=rank, lora_alpha=rank, target_modules=["to_q", "to_k", "to_v", "to_out.0"], init_lora_weights=False)
    )
    out_file.parent.mkdir(parents=True, exist_ok=True)
    diffusers.FluxPipeline.save_lora_weights(
        out_file.parent, transformer_lora_layers=get_peft_model_state_dict(transformer), weight_name=out_file.name
    )
    return out_file


def make_tiny_gguf_transformer(model_folder: Path | str, out_file: Path | str) -> Path:
    """The folder's transformer as a GGUF file, Q8_0-quantized where the rows allow (as llama.cpp-style tools write it)."""
    import gguf
    import numpy as np
    from safetensors.torch import load_file

    model_folder, out_file = Path(model_folder), Path(out_file)
    state = load_file(str(model_folder / "transformer" / "diffusion_pytorch_model.safetensors"))
    out_file.parent.mkdir(parents=True, exist_ok=True)
    writer = gguf.GGUFWriter(str(out_file), "flux")
    for name, tensor in state.items():
        array = tensor.float().numpy()
        if array.ndim == 2 and array.shape[-1] % 32 == 0:  # Q8_0 packs rows in blocks of 32
            quantized = gguf.quants.quantize(array, gguf.GGMLQuantizationType.Q8_0)
            writer.add_tensor(name, quantized, raw_shape=quantized.shape, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
        else:
            writer.add_tensor(name, array.astype(np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return out_file
