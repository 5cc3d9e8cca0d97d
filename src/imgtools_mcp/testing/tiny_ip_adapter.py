"""A tiny random IP-Adapter (h94/IP-Adapter's layout: weights plus a CLIP image encoder) for a tiny pipeline's UNet."""

from __future__ import annotations

from pathlib import Path

import torch

IMAGE_EMBED_DIM = 16
TOKENS = 4


def make_test_ip_adapter(model_dir: Path, out_dir: Path, *, subfolder: str = "models", weight_name: str = "ip-adapter_sd15.safetensors", seed: int = 0) -> Path:
    """`out_dir/<subfolder>/<weight_name>` and `out_dir/<subfolder>/image_encoder/`, as in the hub repo, with random weights.

    The key layout is the original IP-Adapter's: `image_proj.proj/norm` (image embedding to TOKENS context tokens)
    and `ip_adapter.<n>.to_k_ip/to_v_ip` for every cross-attention layer, numbered as diffusers counts them.
    """
    from diffusers import UNet2DConditionModel
    from safetensors.torch import save_file
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

    generator = torch.Generator().manual_seed(seed)
    unet = UNet2DConditionModel.from_pretrained(Path(model_dir) / "unet")
    cross = unet.config.cross_attention_dim
    state: dict[str, torch.Tensor] = {
        "image_proj.proj.weight": torch.randn(cross * TOKENS, IMAGE_EMBED_DIM, generator=generator) * 0.5,
        "image_proj.proj.bias": torch.zeros(cross * TOKENS),
        "image_proj.norm.weight": torch.ones(cross),
        "image_proj.norm.bias": torch.zeros(cross),
    }
    key_id = 1
    for name in unet.attn_processors:
        if name.endswith("attn1.processor"):
            continue  # self-attention has no image tokens
        if name.startswith("mid_block"):
            hidden = unet.config.block_out_channels[-1]
        elif name.startswith("up_blocks"):
            hidden = list(reversed(unet.config.block_out_channels))[int(name[len("up_blocks.")])]
        else:
            hidden = unet.config.block_out_channels[int(name[len("down_blocks.")])]
        for part in ("to_k_ip", "to_v_ip"):
            state[f"ip_adapter.{key_id}.{part}.weight"] = torch.randn(hidden, cross, generator=generator) * 0.3
        key_id += 2  # the original checkpoints number cross-attention layers 1, 3, 5, ... (diffusers reads them so)
    folder = Path(out_dir) / subfolder
    folder.mkdir(parents=True, exist_ok=True)
    save_file(state, str(folder / weight_name))
    torch.manual_seed(seed)
    encoder = CLIPVisionModelWithProjection(
        CLIPVisionConfig(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4, image_size=32,
                         patch_size=8, projection_dim=IMAGE_EMBED_DIM)
    )
    encoder.save_pretrained(folder / "image_encoder")
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(folder / "image_encoder")
    return Path(out_dir)
