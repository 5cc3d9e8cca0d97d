"""Model families (SD 1.x, SD 2.x, SDXL, turbo variants) and the defaults each one expects."""

from __future__ import annotations

import json
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any


class Family(str, Enum):
    SD1 = "sd1"
    SD2 = "sd2"
    SDXL = "sdxl"

    @property
    def label(self) -> str:
        return {"sd1": "SD 1.x", "sd2": "SD 2.x", "sdxl": "SDXL"}[self.value]


@dataclass(frozen=True)
class FamilyInfo:
    """What the engine knows about a model: its family, whether it is a few-step distilled model, its native size."""

    family: Family
    turbo: bool
    native_size: int
    inpainting: bool = False

    @property
    def default_steps(self) -> int:
        # Distilled models (turbo, lightning, LCM) are trained for 1-4 steps; more steps only blur.
        if self.turbo:
            return 4
        return 30 if self.family is Family.SDXL else 25

    @property
    def default_guidance(self) -> float:
        # Adversarially distilled models were trained without classifier-free guidance.
        if self.turbo:
            return 0.0
        return 5.0 if self.family is Family.SDXL else 7.0

    def as_dict(self) -> dict[str, Any]:
        return {"family": self.family.value, "turbo": self.turbo, "native_size": self.native_size, "inpainting": self.inpainting}


_TURBO_MARKERS = ("turbo", "lightning", "lcm", "hyper", "schnell", "1step", "2step", "4step")


def looks_turbo(name: str) -> bool:
    lowered = name.lower()
    return any(marker in lowered for marker in _TURBO_MARKERS)


def family_from_configs(pipeline_class: str, unet_config: dict[str, Any], vae_scale_factor: int, name: str) -> FamilyInfo:
    """Decide the family from a pipeline's model_index class name and its UNet config."""
    cross_dim = unet_config.get("cross_attention_dim")
    if isinstance(cross_dim, list | tuple):
        cross_dim = max(cross_dim)
    if "XL" in pipeline_class or unet_config.get("addition_embed_type") == "text_time":
        family = Family.SDXL
    elif cross_dim == 1024:
        family = Family.SD2
    else:
        family = Family.SD1
    sample_size = unet_config.get("sample_size") or {Family.SDXL: 128, Family.SD2: 96, Family.SD1: 64}[family]
    if isinstance(sample_size, list | tuple):
        sample_size = sample_size[0]
    # diffusers itself defaults height/width to sample_size * vae_scale_factor; so do we.
    native = int(sample_size) * vae_scale_factor
    inpainting = unet_config.get("in_channels") == 9
    return FamilyInfo(family=family, turbo=looks_turbo(name), native_size=native, inpainting=inpainting)


def family_from_folder(folder: Path, name: str) -> FamilyInfo:
    """Read model_index.json and unet/config.json without loading weights."""
    index = json.loads((folder / "model_index.json").read_text())
    unet_config = json.loads((folder / "unet" / "config.json").read_text())
    vae_config_path = folder / "vae" / "config.json"
    vae_blocks = 4
    if vae_config_path.exists():
        vae_blocks = len(json.loads(vae_config_path.read_text()).get("block_out_channels", [0] * 4))
    return family_from_configs(index.get("_class_name", ""), unet_config, 2 ** (vae_blocks - 1), name)


def family_from_state_dict_keys(keys: set[str], name: str, unet_in_channels: int = 4) -> FamilyInfo:
    """Recognise an original (A1111-style) single-file checkpoint by the keys it carries."""
    if any(k.startswith("conditioner.embedders.1") for k in keys):
        family = Family.SDXL
    elif any(k.startswith("cond_stage_model.model.") for k in keys):
        family = Family.SD2
    else:
        family = Family.SD1
    native = {Family.SDXL: 1024, Family.SD2: 768, Family.SD1: 512}[family]
    return FamilyInfo(family=family, turbo=looks_turbo(name), native_size=native, inpainting=unet_in_channels == 9)
