"""Tiny random-weight FLUX.2 dev (Mistral3 text encoder) and FLUX.2 klein (Qwen3) pipelines, built from configs."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from . import register_builder
from .tiny_text import mistral_tokenizer, qwen_tokenizer

TEXT_HIDDEN = 16
# The pipelines stack these hidden states of the text encoder (their defaults), so the tiny encoders are
# that deep (16 wide, so still tiny) and the real call arguments run unchanged.
DEV_TEXT_LAYERS = (10, 20, 30)
KLEIN_TEXT_LAYERS = (9, 18, 27)


def _transformer_and_vae(seed: int, guidance_embeds: bool):
    from diffusers import AutoencoderKLFlux2, Flux2Transformer2DModel

    torch.manual_seed(seed)
    transformer = Flux2Transformer2DModel(
        patch_size=1, in_channels=16, num_layers=1, num_single_layers=1, attention_head_dim=16, num_attention_heads=2,
        joint_attention_dim=3 * TEXT_HIDDEN, timestep_guidance_channels=256, axes_dims_rope=[4, 4, 4, 4],
        guidance_embeds=guidance_embeds,
    )
    torch.manual_seed(seed)
    # FLUX.2's autoencoder layout (four blocks: 8x; the pipeline packs 2x2 latent patches: size multiple 16).
    vae = AutoencoderKLFlux2(
        sample_size=64, in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(8, 8, 8, 8), layers_per_block=1,
        latent_channels=4, norm_num_groups=4, use_quant_conv=False, use_post_quant_conv=False,
    )
    return transformer, vae


def _scheduler():
    from diffusers import FlowMatchEulerDiscreteScheduler

    # FLUX.2's own: resolution-dependent shift.
    return FlowMatchEulerDiscreteScheduler(
        base_image_seq_len=256, base_shift=0.5, max_image_seq_len=4096, max_shift=1.15, shift=3.0, use_dynamic_shifting=True,
    )


def build_flux2(folder: Path | str, seed: int = 0) -> Path:
    """FLUX.2 dev: guidance-distilled (`guidance` embedding), text and up to several reference images."""
    from diffusers import Flux2Pipeline
    from transformers import Mistral3Config, Mistral3ForConditionalGeneration

    folder = Path(folder)
    transformer, vae = _transformer_and_vae(seed, guidance_embeds=True)
    # The real repo's `tokenizer/` is a Pixtral processor, which needs torchvision to build; the pipeline uses only
    # its tokenizer side for text prompts. The folder gets a tokenizer with Mistral's chat template, filed under the
    # processor's name with the processor's files, as in the real repo (families/flux2.py loads it either way).
    tokenizer = mistral_tokenizer()
    ids = dict(zip(("bos_token_id", "eos_token_id", "pad_token_id"), tokenizer.convert_tokens_to_ids(["<s>", "</s>", "<pad>"])))
    config = Mistral3Config(
        text_config={
            "model_type": "mistral", "vocab_size": len(tokenizer), "hidden_size": TEXT_HIDDEN, "intermediate_size": 37,
            "max_position_embeddings": 1024, "num_attention_heads": 4, "num_hidden_layers": max(DEV_TEXT_LAYERS),
            "num_key_value_heads": 2, "head_dim": 4, "rms_norm_eps": 1e-05, "rope_theta": 1000000000.0,
            "sliding_window": None, **ids,
        },
        vision_config={
            "model_type": "pixtral", "hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 4,
            "intermediate_size": 37, "image_size": 30, "patch_size": 6, "num_channels": 3,
        },
        image_seq_length=4, vision_feature_layer=-1, image_token_index=tokenizer.convert_tokens_to_ids("[IMG]"), **ids,
    )
    torch.manual_seed(seed)
    text_encoder = Mistral3ForConditionalGeneration(config).eval()
    pipe = Flux2Pipeline(scheduler=_scheduler(), text_encoder=text_encoder, tokenizer=tokenizer, transformer=transformer, vae=vae)
    pipe.register_to_config(tokenizer=("transformers", "PixtralProcessor"))
    pipe.save_pretrained(folder, safe_serialization=True)
    _as_pixtral_processor(folder / "tokenizer", image_token="[IMG]")
    return folder


def _as_pixtral_processor(tokenizer_dir: Path, image_token: str) -> None:
    """Add the processor files the real FLUX.2 dev `tokenizer/` folder has (the tiny vision tower's 6-pixel patches)."""
    config = json.loads((tokenizer_dir / "tokenizer_config.json").read_text())
    config["processor_class"] = "PixtralProcessor"
    (tokenizer_dir / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    (tokenizer_dir / "processor_config.json").write_text(json.dumps(
        {"processor_class": "PixtralProcessor", "image_token": image_token, "patch_size": 6, "spatial_merge_size": 1}, indent=2
    ))
    (tokenizer_dir / "preprocessor_config.json").write_text(json.dumps(
        {"image_processor_type": "PixtralImageProcessor", "patch_size": {"height": 6, "width": 6},
         "size": {"longest_edge": 30}, "do_resize": True, "do_rescale": True, "do_normalize": True}, indent=2
    ))


def build_flux2_klein(folder: Path | str, seed: int = 0) -> Path:
    """FLUX.2 klein (4B layout): step-distilled (`is_distilled`: 4 steps, no CFG), multi-reference edits."""
    from diffusers import Flux2KleinPipeline
    from transformers import Qwen3Config, Qwen3ForCausalLM

    folder = Path(folder)
    transformer, vae = _transformer_and_vae(seed, guidance_embeds=False)
    tokenizer = qwen_tokenizer()
    bos, eos = tokenizer.convert_tokens_to_ids(["<|endoftext|>", "<|im_end|>"])
    torch.manual_seed(seed)
    text_encoder = Qwen3ForCausalLM(
        Qwen3Config(
            hidden_size=TEXT_HIDDEN, intermediate_size=16, num_hidden_layers=max(KLEIN_TEXT_LAYERS), num_attention_heads=2,
            num_key_value_heads=2, head_dim=8, vocab_size=len(tokenizer), max_position_embeddings=1024,
            bos_token_id=bos, eos_token_id=eos,
        )
    ).eval()
    pipe = Flux2KleinPipeline(
        scheduler=_scheduler(), text_encoder=text_encoder, tokenizer=tokenizer, transformer=transformer, vae=vae,
        is_distilled=True,
    )
    pipe.save_pretrained(folder, safe_serialization=True)
    return folder


register_builder("flux2", build_flux2)
register_builder("flux2-klein", build_flux2_klein)
