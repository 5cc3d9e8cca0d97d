"""A tiny random SAM (transformers' SamModel) and its processor at 64 px, saved like a hub model, for offline tests."""

from __future__ import annotations

from pathlib import Path

import torch


def make_test_sam(out_dir: Path, *, seed: int = 0) -> Path:
    """SAM's architecture (a 2-layer, 32-wide ViT on 64 px in 8 px patches, 16-wide prompt encoder and mask
    decoder) with random weights; its processor resizes the longest side to 64 and pads to 64x64."""
    from transformers import (
        SamConfig,
        SamImageProcessor,
        SamMaskDecoderConfig,
        SamModel,
        SamProcessor,
        SamPromptEncoderConfig,
        SamVisionConfig,
    )

    torch.manual_seed(seed)
    vision = SamVisionConfig(
        image_size=64, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, mlp_dim=64,
        output_channels=16, global_attn_indexes=[1], window_size=4, num_pos_feats=8,
    )
    prompt = SamPromptEncoderConfig(hidden_size=16, image_size=64, patch_size=8, mask_input_channels=4)
    decoder = SamMaskDecoderConfig(hidden_size=16, num_hidden_layers=2, num_attention_heads=2, mlp_dim=32, iou_head_hidden_dim=16)
    out_dir = Path(out_dir)
    SamModel(SamConfig(vision_config=vision, prompt_encoder_config=prompt, mask_decoder_config=decoder)).save_pretrained(out_dir)
    processor = SamImageProcessor(size={"longest_edge": 64}, pad_size={"height": 64, "width": 64})
    SamProcessor(image_processor=processor).save_pretrained(out_dir)
    return out_dir
