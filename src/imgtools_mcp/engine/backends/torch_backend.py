"""torch: runs every pipeline diffusers loads, on every device; the fallback whenever another backend declines a request.

What it sets up on a freshly loaded pipeline (every model gets this, whatever its chosen backend):
- attention: diffusers' default processor already calls torch's scaled_dot_product_attention (flash /
  memory-efficient kernels where the device has them), so nothing is swapped in;
- no channels-last memory format: on an H200 (torch 2.11, benchmarks/gpu_check.py) it made SD 1.5 and SDXL
  8-10% slower at batch 4 and was within noise at batch 1, so weights keep the default layout;
- the VAE's own dtype from `choose_vae_dtype`: an SDXL VAE in fp16 overflows (black images), so it is kept
  in bf16 or fp32 and its inputs are cast on the way in, instead of being moved up and down every call;
- the GPU fast path of `fast_path.py` (IMGTOOLS_TORCH_COMPILE): fused QKV projections on CUDA, and the denoiser
  compiled whole with CUDA graphs (`auto` on CUDA 8.0+) or by repeated blocks (`regional`); off on a CPU by default,
  where compiling takes minutes per size.
"""

from __future__ import annotations

import logging
from typing import Any, ClassVar

import torch

from ..choice import choose_vae_dtype
from .base import Backend, Capabilities
from .fast_path import FastPath, apply_fast_path, plan_fast_path

log = logging.getLogger(__name__)

_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


class TorchBackend(Backend):
    id: ClassVar[str] = "torch"
    capabilities: ClassVar[Capabilities] = Capabilities(
        label="torch",
        device_kinds=frozenset({"cuda", "rocm", "xpu", "mps", "cpu"}),
        families=None,
        lora=True,
        any_size=True,
    )
    components: ClassVar[tuple[str, ...]] = ()

    def prepare(self, model: Any, shape: Any, progress: Any = None) -> dict[str, str]:
        return {}

    @property
    def fast_path(self) -> FastPath:
        """What this device compiles and fuses, with the reasons (engine_status and doctor show it)."""
        return plan_fast_path(self.facts, getattr(self.settings, "torch_compile", "auto"))

    def setup_pipeline(self, pipe: Any, family: str, dtype: str, *, fast_path: FastPath | None = None) -> list[str]:
        """Per-pipeline settings made once after loading; returns what was done, for the load log."""
        done: list[str] = []
        vae = getattr(pipe, "vae", None)
        if vae is not None and isinstance(vae, torch.nn.Module):
            done += keep_vae_in_safe_dtype(vae, self.facts, dtype, family)
        done += apply_fast_path(pipe, fast_path or self.fast_path)
        return done

    def describe(self) -> dict[str, Any]:
        return {"id": self.id, "fast_path": self.fast_path.as_dict()}


def keep_vae_in_safe_dtype(vae: torch.nn.Module, facts: "DeviceFacts", dtype: str, family: str) -> list[str]:
    """Give the VAE the dtype `choose_vae_dtype` picks and cast what enters it, so it never runs in fp16 overflow."""
    config = getattr(vae, "config", None)
    # A VAE whose config says it needs no upcast (e.g. the fp16-fixed SDXL VAE) is safe in fp16.
    fp16_safe = config is not None and not getattr(config, "force_upcast", True)
    choice = choose_vae_dtype(facts, dtype, family, vae_fp16_safe=fp16_safe)
    if choice.value == dtype:
        return []
    vae.to(_DTYPES[choice.value])
    # The VAE is now safe as it is: stop SDXL pipelines moving it to fp32 and back to fp16 around every call.
    if config is not None and hasattr(vae, "register_to_config"):
        vae.register_to_config(force_upcast=False)
    # Pipelines hand the VAE tensors in the model's dtype; cast them where they enter.
    entries = [getattr(vae, "encoder", None), getattr(vae, "post_quant_conv", None) or getattr(vae, "decoder", None)]
    for module in entries:
        if isinstance(module, torch.nn.Module):
            module.register_forward_pre_hook(_cast_inputs_to_own_dtype)
    log.info("VAE kept in %s: %s", choice.value, choice.reason)
    return [f"VAE in {choice.value}: {choice.reason}"]


def _cast_inputs_to_own_dtype(module: torch.nn.Module, args: tuple) -> tuple:
    own = next(module.parameters()).dtype
    return tuple(a.to(own) if isinstance(a, torch.Tensor) and a.is_floating_point() else a for a in args)
