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


def _unzero(model: torch.nn.Module, seed: int) -> None:
    """Small random values for every all-zero weight (the zero-initialised output layers among them), so the tiny
    ControlNet's residuals are not zero and control visibly changes an image."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if parameter.numel() and not parameter.any():
                scale = 0.1 if name.endswith("bias") else 0.3
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * scale)


def make_test_sdxl_union_controlnet(model_dir: Path, out_dir: Path, *, seed: int = 0, modes: int = 8) -> Path:
    """An SDXL union ControlNet (xinsir's ControlNet++ layout, `modes` control types) from a tiny SDXL pipeline's UNet;
    its mode transformer is as wide as the UNet's first block, as in the real one."""
    from diffusers import ControlNetModel, ControlNetUnionModel, UNet2DConditionModel

    unet = UNet2DConditionModel.from_pretrained(Path(model_dir) / "unet")
    config = dict(ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=(8, 16)).config)
    width = unet.config.block_out_channels[0]
    torch.manual_seed(seed)
    controlnet = ControlNetUnionModel.from_config(
        {**config, "num_control_type": modes, "num_trans_channel": width, "num_trans_head": 2, "num_proj_channel": width}
    )
    controlnet.load_state_dict(unet.state_dict(), strict=False)
    _unzero(controlnet, seed)
    out_dir = Path(out_dir)
    controlnet.save_pretrained(out_dir)
    return out_dir


def make_test_flux_union_controlnet(model_dir: Path, out_dir: Path, *, seed: int = 0, modes: int = 10) -> Path:
    """A FLUX.1 union ControlNet (Union-Pro's layout: a FluxControlNetModel with a control-mode embedding)."""
    from diffusers import FluxControlNetModel, FluxTransformer2DModel

    transformer = FluxTransformer2DModel.from_pretrained(Path(model_dir) / "transformer")
    config = transformer.config
    controlnet = FluxControlNetModel.from_transformer(
        transformer, num_layers=config.num_layers, num_single_layers=config.num_single_layers,
        attention_head_dim=config.attention_head_dim, num_attention_heads=config.num_attention_heads,
    )
    torch.manual_seed(seed)
    union = FluxControlNetModel.from_config({**controlnet.config, "num_mode": modes})
    union.load_state_dict(controlnet.state_dict(), strict=False)
    _unzero(union, seed)
    out_dir = Path(out_dir)
    union.save_pretrained(out_dir)
    return out_dir


def make_test_sd3_controlnet(model_dir: Path, out_dir: Path, *, seed: int = 0) -> Path:
    """An SD 3.5 ControlNet (the canny/depth/blur layout: no extra conditioning channels) from a tiny SD3 pipeline's
    transformer; diffusers' SD3 ControlNet wants at least two layers."""
    from diffusers import SD3ControlNetModel, SD3Transformer2DModel

    transformer = SD3Transformer2DModel.from_pretrained(Path(model_dir) / "transformer")
    torch.manual_seed(seed)
    # Random weights throughout: the tiny transformer's one block is a last (context-free) block, unlike these two.
    controlnet = SD3ControlNetModel.from_transformer(
        transformer, num_layers=2, num_extra_conditioning_channels=0, load_weights_from_transformer=False
    )
    _unzero(controlnet, seed)
    out_dir = Path(out_dir)
    controlnet.save_pretrained(out_dir)
    return out_dir


def make_test_qwen_image_controlnet(model_dir: Path, out_dir: Path, *, seed: int = 0) -> Path:
    """A Qwen-Image ControlNet (InstantX's union layout) from a tiny Qwen-Image pipeline's transformer."""
    from diffusers import QwenImageControlNetModel, QwenImageTransformer2DModel

    transformer = QwenImageTransformer2DModel.from_pretrained(Path(model_dir) / "transformer")
    torch.manual_seed(seed)
    keys = ("patch_size", "in_channels", "out_channels", "num_layers", "attention_head_dim", "num_attention_heads",
            "joint_attention_dim", "axes_dims_rope")
    controlnet = QwenImageControlNetModel(**{key: transformer.config[key] for key in keys})
    controlnet.load_state_dict(transformer.state_dict(), strict=False)
    _unzero(controlnet, seed)
    out_dir = Path(out_dir)
    controlnet.save_pretrained(out_dir)
    return out_dir


def make_test_z_image_controlnet(model_dir: Path, out_dir: Path, *, seed: int = 0) -> Path:
    """A Z-Image ControlNet (alibaba-pai's Fun union layout): control blocks beside the tiny transformer's layers; the
    embedders and refiners it shares with the transformer are not part of it."""
    import json

    from diffusers import ZImageControlNetModel

    config = json.loads((Path(model_dir) / "transformer" / "config.json").read_text())
    torch.manual_seed(seed)
    controlnet = ZImageControlNetModel(
        control_layers_places=[0], control_in_dim=config["in_channels"], all_patch_size=tuple(config["all_patch_size"]),
        all_f_patch_size=tuple(config["all_f_patch_size"]), dim=config["dim"], n_refiner_layers=config["n_refiner_layers"],
        n_heads=config["n_heads"], n_kv_heads=config["n_kv_heads"], norm_eps=config["norm_eps"], qk_norm=config["qk_norm"],
    )
    _unzero(controlnet, seed)
    out_dir = Path(out_dir)
    controlnet.save_pretrained(out_dir)
    return out_dir
