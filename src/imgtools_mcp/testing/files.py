"""Tiny LoRAs and single-file checkpoints made from the tiny test pipelines, for offline tests and demos."""

from __future__ import annotations

import json
from pathlib import Path

import torch

# The attention projections most LoRAs train (diffusers/peft names).
LORA_TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]


def make_test_lora(model_folder: Path | str, out_file: Path | str, *, seed: int = 0, rank: int = 4) -> Path:
    """A LoRA on the tiny model's UNet attention in diffusers/peft format, with random non-zero up weights.

    peft initialises lora_B to zero (a no-op adapter); `init_lora_weights=False` draws it at random,
    so the adapter really changes the images.
    """
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline, UNet2DConditionModel
    from peft import LoraConfig, get_peft_model_state_dict

    model_folder, out_file = Path(model_folder), Path(out_file)
    pipeline_class = json.loads((model_folder / "model_index.json").read_text()).get("_class_name", "")
    torch.manual_seed(seed)
    unet = UNet2DConditionModel.from_pretrained(model_folder / "unet")
    unet.add_adapter(LoraConfig(r=rank, lora_alpha=rank, target_modules=LORA_TARGETS, init_lora_weights=False))
    layers = get_peft_model_state_dict(unet)
    saver = StableDiffusionXLPipeline if "XL" in pipeline_class else StableDiffusionPipeline
    out_file.parent.mkdir(parents=True, exist_ok=True)
    saver.save_lora_weights(out_file.parent, unet_lora_layers=layers, weight_name=out_file.name)
    return out_file


# ----- diffusers folder -> original (LDM/A1111) single-file layout, SD 1.x -----

_RESNET = (
    ("norm1", "in_layers.0"), ("conv1", "in_layers.2"), ("norm2", "out_layers.0"), ("conv2", "out_layers.3"),
    ("time_emb_proj", "emb_layers.1"), ("conv_shortcut", "skip_connection"),
)  # fmt: skip
_UNET_FIXED = {
    "time_embedding.linear_1": "time_embed.0",
    "time_embedding.linear_2": "time_embed.2",
    "conv_in": "input_blocks.0.0",
    "conv_norm_out": "out.0",
    "conv_out": "out.2",
}


def _unet_to_ldm(state: dict[str, torch.Tensor], config: dict) -> dict[str, torch.Tensor]:
    """The inverse of diffusers' convert_ldm_unet_checkpoint for a UNet with any block count."""
    out: dict[str, torch.Tensor] = {}

    def move(prefix: str, target: str, resnet: bool = False) -> None:
        for key, value in state.items():
            if not key.startswith(prefix + "."):
                continue
            rest = key[len(prefix) + 1 :]
            if resnet:
                for diffusers_name, ldm_name in _RESNET:
                    if rest.startswith(diffusers_name + "."):
                        rest = ldm_name + rest[len(diffusers_name) :]
                        break
            out[f"{target}.{rest}"] = value

    for prefix, target in _UNET_FIXED.items():
        move(prefix, target)
    per_block = config["layers_per_block"]
    levels = len(config["block_out_channels"])
    index = 1
    for block in range(levels):
        for layer in range(per_block):
            move(f"down_blocks.{block}.resnets.{layer}", f"input_blocks.{index}.0", resnet=True)
            move(f"down_blocks.{block}.attentions.{layer}", f"input_blocks.{index}.1")
            index += 1
        if block < levels - 1:
            move(f"down_blocks.{block}.downsamplers.0.conv", f"input_blocks.{index}.0.op")
            index += 1
    move("mid_block.resnets.0", "middle_block.0", resnet=True)
    move("mid_block.attentions.0", "middle_block.1")
    move("mid_block.resnets.1", "middle_block.2", resnet=True)
    index = 0
    for block in range(levels):
        for layer in range(per_block + 1):
            move(f"up_blocks.{block}.resnets.{layer}", f"output_blocks.{index}.0", resnet=True)
            has_attention = any(k.startswith(f"up_blocks.{block}.attentions.{layer}.") for k in state)
            move(f"up_blocks.{block}.attentions.{layer}", f"output_blocks.{index}.1")
            if layer == per_block:
                move(f"up_blocks.{block}.upsamplers.0.conv", f"output_blocks.{index}.{2 if has_attention else 1}.conv")
            index += 1
    if len(out) != len(state):
        raise ValueError(f"UNet conversion left {len(state) - len(out)} tensors unmapped")
    return {"model.diffusion_model." + key: value for key, value in out.items()}


def _vae_to_ldm(state: dict[str, torch.Tensor], config: dict) -> dict[str, torch.Tensor]:
    """The inverse of diffusers' convert_ldm_vae_checkpoint."""
    levels = len(config["block_out_channels"])
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        name = key.replace("encoder.conv_norm_out", "encoder.norm_out").replace("decoder.conv_norm_out", "decoder.norm_out")
        if ".down_blocks." in name:
            name = name.replace("down_blocks.", "down.").replace(".resnets.", ".block.").replace(".downsamplers.0.", ".downsample.")
        if ".up_blocks." in name:
            parts = name.split(".")
            parts[2] = str(levels - 1 - int(parts[2]))  # LDM numbers the decoder's levels from the bottom
            name = ".".join(parts).replace("up_blocks.", "up.").replace(".resnets.", ".block.").replace(".upsamplers.0.", ".upsample.")
        if ".mid_block.resnets." in name:
            parts = name.split(".")
            name = ".".join([parts[0], "mid", f"block_{int(parts[3]) + 1}", *parts[4:]])
        if ".mid_block.attentions.0." in name:
            name = name.replace("mid_block.attentions.0.", "mid.attn_1.")
            for diffusers_name, ldm_name in (("group_norm", "norm"), ("to_q", "q"), ("to_k", "k"), ("to_v", "v"), ("to_out.0", "proj_out")):
                name = name.replace(f".{diffusers_name}.", f".{ldm_name}.")
            if value.ndim == 2:
                value = value[:, :, None, None]  # LDM's attention projections are 1x1 convolutions
        out["first_stage_model." + name.replace("conv_shortcut", "nin_shortcut")] = value
    return out


def make_test_checkpoint(model_folder: Path | str, out_file: Path | str) -> Path:
    """Write a tiny SD 1.x diffusers folder as one original-layout .safetensors checkpoint (as A1111/civitai ship them)."""
    from safetensors.torch import load_file, save_file

    model_folder, out_file = Path(model_folder), Path(out_file)
    if "XL" in json.loads((model_folder / "model_index.json").read_text()).get("_class_name", ""):
        raise ValueError("make_test_checkpoint converts SD 1.x pipelines only")
    unet_config = json.loads((model_folder / "unet" / "config.json").read_text())
    vae_config = json.loads((model_folder / "vae" / "config.json").read_text())
    checkpoint = _unet_to_ldm(load_file(model_folder / "unet" / "diffusion_pytorch_model.safetensors"), unet_config)
    checkpoint.update(_vae_to_ldm(load_file(model_folder / "vae" / "diffusion_pytorch_model.safetensors"), vae_config))
    for key, value in load_file(model_folder / "text_encoder" / "model.safetensors").items():
        name = key if key.startswith("text_model.") else "text_model." + key
        checkpoint["cond_stage_model.transformer." + name] = value
    out_file.parent.mkdir(parents=True, exist_ok=True)
    save_file({key: value.contiguous() for key, value in checkpoint.items()}, str(out_file))
    return out_file
