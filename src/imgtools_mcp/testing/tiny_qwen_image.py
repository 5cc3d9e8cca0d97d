"""Tiny random-weight Qwen-Image and Qwen-Image-Edit-Plus pipelines, built from configs and saved by diffusers."""

from __future__ import annotations

from pathlib import Path

import torch

from . import register_builder
from .tiny_text import qwen_tokenizer

TEXT_HIDDEN = 16


def _text_encoder(tokenizer):
    """Qwen2.5-VL with a 2-layer, 16-wide language model and vision tower; token ids from the tiny tokenizer."""
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    ids = dict(zip(("image_token_id", "video_token_id", "vision_start_token_id", "vision_end_token_id"),
                   tokenizer.convert_tokens_to_ids(["<|image_pad|>", "<|video_pad|>", "<|vision_start|>", "<|vision_end|>"])))
    bos, eos = tokenizer.convert_tokens_to_ids(["<|endoftext|>", "<|im_end|>"])
    config = Qwen2_5_VLConfig(
        text_config={
            "hidden_size": TEXT_HIDDEN, "intermediate_size": 16, "num_hidden_layers": 2, "num_attention_heads": 2,
            "num_key_value_heads": 2, "vocab_size": len(tokenizer), "max_position_embeddings": 4096,
            "rope_scaling": {"mrope_section": [1, 1, 2], "rope_type": "default", "type": "default"},
            "rope_theta": 1000000.0, "bos_token_id": bos, "eos_token_id": eos,
        },
        vision_config={"depth": 2, "hidden_size": 16, "intermediate_size": 16, "num_heads": 2, "out_hidden_size": TEXT_HIDDEN},
        hidden_size=TEXT_HIDDEN,
        vocab_size=len(tokenizer),
        bos_token_id=bos,
        eos_token_id=eos,
        **ids,
    )
    return Qwen2_5_VLForConditionalGeneration(config).eval()


def _components(seed: int):
    from diffusers import AutoencoderKLQwenImage, FlowMatchEulerDiscreteScheduler, QwenImageTransformer2DModel

    torch.manual_seed(seed)
    transformer = QwenImageTransformer2DModel(
        patch_size=2, in_channels=16, out_channels=4, num_layers=2, attention_head_dim=16, num_attention_heads=3,
        joint_attention_dim=TEXT_HIDDEN, guidance_embeds=False, axes_dims_rope=(8, 4, 4),
    )
    torch.manual_seed(seed)
    # Three downsamplings, as in the real VAE: 8x, so the pipeline's size multiple is the real one (16). The
    # channels are the smallest the blocks allow, because Edit-Plus encodes every reference at ~1 megapixel.
    vae = AutoencoderKLQwenImage(
        base_dim=4, z_dim=4, dim_mult=[1, 1, 1, 1], num_res_blocks=1, temperal_downsample=[False, True, True],
        latents_mean=[0.0] * 4, latents_std=[1.0] * 4,
    )
    # Qwen-Image's own schedule: resolution-dependent shift (the pipeline computes mu from the image size).
    scheduler = FlowMatchEulerDiscreteScheduler(
        base_image_seq_len=256, base_shift=0.5, max_image_seq_len=8192, max_shift=0.9, shift=1.0,
        shift_terminal=0.02, time_shift_type="exponential", use_dynamic_shifting=True,
    )
    tokenizer = qwen_tokenizer(chat_template=None)
    torch.manual_seed(seed)
    return dict(transformer=transformer, vae=vae, scheduler=scheduler, text_encoder=_text_encoder(tokenizer), tokenizer=tokenizer)


def build_qwen_image(folder: Path | str, seed: int = 0) -> Path:
    """Qwen-Image (text to image; img2img and inpaint load from the same folder)."""
    from diffusers import QwenImagePipeline

    folder = Path(folder)
    QwenImagePipeline(**_components(seed)).save_pretrained(folder, safe_serialization=True)
    return folder


def build_qwen_image_edit(folder: Path | str, seed: int = 0, pipeline_class: str = "QwenImageEditPlusPipeline") -> Path:
    """Qwen-Image-Edit-Plus (2509/2511 layout): instruction edits with 1-3 reference images seen by the VL encoder."""
    import diffusers
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    from ..engine.families.qwen_image import still_image_processor_class

    folder = Path(folder)
    parts = _components(seed)
    # The real processor's sizes (patch 14, merge 2); the pipeline resizes each reference to ~384x384 for it.
    image_processor = Qwen2VLImageProcessorPil(patch_size=14, temporal_patch_size=2, merge_size=2)
    processor = still_image_processor_class()(image_processor=image_processor, tokenizer=parts["tokenizer"])
    pipe = getattr(diffusers, pipeline_class)(**parts, processor=processor)
    # model_index names the processor as the real checkpoints do, so the folder has their layout.
    pipe.register_to_config(processor=("transformers", "Qwen2VLProcessor"))
    pipe.save_pretrained(folder, safe_serialization=True)
    return folder


def build_qwen_image_edit_first(folder: Path | str, seed: int = 0) -> Path:
    """The first Qwen-Image-Edit (one input image): the same components under QwenImageEditPipeline."""
    return build_qwen_image_edit(folder, seed, pipeline_class="QwenImageEditPipeline")


register_builder("qwen-image", build_qwen_image)
register_builder("qwen-image-edit", build_qwen_image_edit)
register_builder("qwen-image-edit-1", build_qwen_image_edit_first)
