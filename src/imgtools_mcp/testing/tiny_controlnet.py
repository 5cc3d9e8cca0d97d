"""A tiny random ControlNet made from a tiny pipeline's UNet (as ControlNetModel.from_unet does), for offline tests."""

from __future__ import annotations

from pathlib import Path

import torch


def make_test_controlnet(model_dir: Path, out_dir: Path, *, seed: int = 0) -> Path:
    """A ControlNet whose output is not zero: from_unet starts its zero convolutions at zero, which would make any
    control a no-op and a "control changes the output" test meaningless, so they get small random weights."""
    from diffusers import ControlNetModel, UNet2DConditionModel

    unet = UNet2DConditionModel.from_pretrained(Path(model_dir) / "unet")
    controlnet = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=(8, 16))
    generator = torch.Generator().manual_seed(seed)
    zero_convs = [*controlnet.controlnet_down_blocks, controlnet.controlnet_mid_block, controlnet.controlnet_cond_embedding.conv_out]
    with torch.no_grad():
        for conv in zero_convs:
            conv.weight.copy_(torch.randn(conv.weight.shape, generator=generator) * 0.3)
            conv.bias.copy_(torch.randn(conv.bias.shape, generator=generator) * 0.1)
    out_dir = Path(out_dir)
    controlnet.save_pretrained(out_dir)
    return out_dir


def make_test_flux_controlnet(model_dir: Path, out_dir: Path, *, seed: int = 0) -> Path:
    """A FLUX.1 ControlNet from a tiny FLUX pipeline's transformer, its zero-initialised output layers made random."""
    from diffusers import FluxControlNetModel, FluxTransformer2DModel

    transformer = FluxTransformer2DModel.from_pretrained(Path(model_dir) / "transformer")
    config = transformer.config
    controlnet = FluxControlNetModel.from_transformer(
        transformer, num_layers=config.num_layers, num_single_layers=config.num_single_layers,
        attention_head_dim=config.attention_head_dim, num_attention_heads=config.num_attention_heads,
    )
    generator = torch.Generator().manual_seed(seed)
    zero_layers = [*controlnet.controlnet_blocks, *controlnet.controlnet_single_blocks, controlnet.controlnet_x_embedder]
    with torch.no_grad():
        for layer in zero_layers:
            layer.weight.copy_(torch.randn(layer.weight.shape, generator=generator) * 0.3)
    out_dir = Path(out_dir)
    controlnet.save_pretrained(out_dir)
    return out_dir
