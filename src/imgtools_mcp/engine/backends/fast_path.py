"""The torch backend's GPU fast path: what it compiles, fuses and which attention kernels run, each a `Choice`.

`plan_fast_path` is pure (device facts and the IMGTOOLS_TORCH_COMPILE setting in, choices out), so every rule
is table-tested without a GPU. `apply_fast_path` makes those choices on a loaded pipeline, and
`compile_stance` runs one request eagerly where a compiled graph would be wrong or wasted:

- compile `cudagraphs`: the denoiser (UNet or transformer) as one static-shape graph with
  `torch.compile(mode="max-autotune", fullgraph=True, dynamic=False)`, which also captures CUDA graphs, so a
  step is one launch instead of hundreds (SD 1.5 at batch 1 is launch-bound on an H200: 43 it/s eager).
  Each size compiles once, on its first request (dynamo's per-shape cache); that first request is the slow one.
- compile `regional`: the UNet's repeated transformer blocks only; minutes less to compile, no CUDA graphs.
- fused QKV projections: one matmul instead of three per attention layer. Not with LoRAs: peft adapters sit
  on to_q/to_k/to_v, which a fused to_qkv would bypass, so a model's first LoRA unfuses it for good.
- attention: torch's scaled_dot_product_attention, which picks flash / cuDNN / memory-efficient kernels per
  shape on CUDA; benchmarks/gpu_check.py measures the kernels side by side.
- no channels-last: on an H200 it made SD 1.5 and SDXL 8-10% slower at batch 4 (benchmarks/gpu_check.py).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from ...config import normalize_compile
from ..choice import Choice

if TYPE_CHECKING:
    from ..device import DeviceFacts

log = logging.getLogger(__name__)

# CUDA graphs and the max-autotune kernels pay off from Ampere on; older cards keep eager kernels.
MIN_CUDA_CAPABILITY = (8, 0)
# Shapes one compiled denoiser keeps before dynamo stops recompiling (sizes x batch x guidance).
RECOMPILE_LIMIT = 32


@dataclass(frozen=True)
class FastPath:
    """The fast-path choices for one device, shown in engine_status and doctor."""

    compile: Choice[str]  # off | regional | cudagraphs
    fuse_qkv: Choice[bool]
    attention: Choice[str]
    channels_last: Choice[bool]

    def as_dict(self) -> dict[str, Any]:
        return {
            name: {"value": choice.value, "reason": choice.reason}
            for name, choice in (("compile", self.compile), ("fuse_qkv", self.fuse_qkv),
                                 ("attention", self.attention), ("channels_last", self.channels_last))
        }  # fmt: skip


def plan_fast_path(facts: "DeviceFacts", requested: str = "auto") -> FastPath:
    """What the torch backend compiles and fuses on this device, and why."""
    mode = normalize_compile(requested)
    fast_gpu = facts.kind == "cuda" and (facts.compute_capability or (0, 0)) >= MIN_CUDA_CAPABILITY
    if mode == "auto":
        if fast_gpu:
            compile_choice = Choice("cudagraphs", f"IMGTOOLS_TORCH_COMPILE=auto on {facts.name}: the denoiser "
                                    "compiles once per size with CUDA graphs (a step is one launch)")  # fmt: skip
        elif facts.kind == "cuda":
            compile_choice = Choice("off", f"IMGTOOLS_TORCH_COMPILE=auto: {facts.name} is older than compute "
                                    "capability 8.0, where CUDA graphs and autotuned kernels pay off")  # fmt: skip
        elif facts.kind == "cpu":
            compile_choice = Choice("off", "IMGTOOLS_TORCH_COMPILE=auto on a CPU: compiling takes minutes per size; "
                                    "the OpenVINO backend is the CPU's compiled path")  # fmt: skip
        else:
            compile_choice = Choice("off", f"IMGTOOLS_TORCH_COMPILE=auto on {facts.kind}: compiled graphs are untested there")
    elif mode == "cudagraphs" and facts.kind != "cuda":
        compile_choice = Choice("regional", f"IMGTOOLS_TORCH_COMPILE=cudagraphs needs CUDA; {facts.kind} compiles "
                                "the repeated blocks only")  # fmt: skip
    else:
        compile_choice = Choice(mode, f"IMGTOOLS_TORCH_COMPILE={mode}")
    if facts.kind == "cuda":
        fuse = Choice(True, "one QKV matmul instead of three per attention layer (until a LoRA is loaded)")
        attention = Choice("sdpa", "torch's scaled_dot_product_attention picks flash, cuDNN or memory-efficient "
                           "kernels per shape")  # fmt: skip
    else:
        fuse = Choice(False, f"not on {facts.kind}: unmeasured there, and LoRAs need the separate projections")
        attention = Choice("sdpa", "torch's scaled_dot_product_attention (diffusers' default processor)")
    channels_last = Choice(False, "channels-last made SD 1.5 and SDXL 8-10% slower at batch 4 on an H200")
    return FastPath(compile_choice, fuse, attention, channels_last)


def denoiser_of(pipe: Any) -> tuple[str, torch.nn.Module] | tuple[None, None]:
    for name in ("unet", "transformer"):
        module = getattr(pipe, name, None)
        if isinstance(module, torch.nn.Module):
            return name, module
    return None, None


def apply_fast_path(pipe: Any, path: FastPath) -> list[str]:
    """Fuse and compile the pipeline's denoiser as `path` says; returns what was done, for the load log."""
    done: list[str] = []
    name, denoiser = denoiser_of(pipe)
    if denoiser is None:
        return done
    if path.fuse_qkv.value and hasattr(denoiser, "fuse_qkv_projections"):
        try:
            denoiser.fuse_qkv_projections()
            denoiser._imgtools_qkv_fused = True
            done.append(f"{name}: QKV projections fused")
        except (ValueError, AttributeError, NotImplementedError) as exc:  # e.g. added KV projections it cannot fuse
            done.append(f"{name}: QKV projections kept separate ({exc})")
    if path.compile.value == "regional":
        if getattr(denoiser, "_repeated_blocks", None):
            denoiser.compile_repeated_blocks(fullgraph=True)
            done.append(f"{name}: repeated blocks compiled with torch.compile (regional)")
    elif path.compile.value == "cudagraphs":
        torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, RECOMPILE_LIMIT)
        denoiser.compile(mode="max-autotune", fullgraph=True, dynamic=False)
        denoiser._imgtools_compiled = True
        done.append(f"{name}: compiled whole with CUDA graphs (max-autotune, static shapes, once per size)")
    return done


def unfuse_for_loras(pipe: Any) -> str | None:
    """Give LoRA adapters back the separate to_q/to_k/to_v they attach to; once per model."""
    name, denoiser = denoiser_of(pipe)
    if denoiser is None or not getattr(denoiser, "_imgtools_qkv_fused", False):
        return None
    denoiser.unfuse_qkv_projections()
    denoiser._imgtools_qkv_fused = False
    return f"{name}: QKV projections unfused (LoRAs attach to the separate projections)"


def eager_reason(pipe: Any, *, plan: str, loras_active: bool, speed: str, extras: bool) -> str | None:
    """Why this request runs the compiled denoiser eagerly, or None when the compiled graph serves it."""
    _, denoiser = denoiser_of(pipe)
    if denoiser is None or not getattr(denoiser, "_imgtools_compiled", False):
        return None
    if plan != "resident":
        return f"the {plan} memory plan moves weights during the step, which a CUDA graph cannot follow"
    if loras_active:
        return "LoRA adapters change the denoiser's graph"
    if speed != "quality":
        return f"speed={speed} skips blocks through hooks the compiled graph does not have"
    if extras:
        return "ControlNet/IP-Adapter inputs change the denoiser's graph"
    return None


@contextlib.contextmanager
def compile_stance(reason: str | None) -> Iterator[None]:
    """Run compiled modules eagerly for this request when `reason` says why; unchanged otherwise."""
    if reason is None:
        yield
        return
    with torch.compiler.set_stance("force_eager"):
        yield
