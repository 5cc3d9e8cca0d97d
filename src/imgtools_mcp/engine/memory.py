"""The memory plan: pick one from measured weights and estimated activations, apply it to a pipeline, undo it."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from enum import Enum

import torch

from .choice import Choice
from .device import DeviceFacts

log = logging.getLogger(__name__)

GIB = 1024**3
MIB = 1024**2


class MemoryPlan(str, Enum):
    """How weights are placed, from fastest (everything on the device) to the least device memory."""

    RESIDENT = "resident"
    VAE_TILING = "vae_tiling"  # plus VAE slicing: decode one image, one tile at a time
    MODEL_OFFLOAD = "model_offload"  # one whole component on the device at a time
    GROUP_OFFLOAD = "group_offload"  # one block of a component at a time
    SEQUENTIAL_OFFLOAD = "sequential_offload"  # one layer at a time

    @property
    def level(self) -> int:
        return list(MemoryPlan).index(self)

    @property
    def offloads(self) -> bool:
        """Whether weights live in CPU RAM and visit the device, which needs a device other than the CPU."""
        return self.level >= MemoryPlan.MODEL_OFFLOAD.level

    # Compare by level, not by the string value, so `plan >= MemoryPlan.MODEL_OFFLOAD` means "saves at least as much".
    def __lt__(self, other: object) -> bool:
        return self.level < other.level if isinstance(other, MemoryPlan) else NotImplemented

    def __le__(self, other: object) -> bool:
        return self.level <= other.level if isinstance(other, MemoryPlan) else NotImplemented

    def __gt__(self, other: object) -> bool:
        return self.level > other.level if isinstance(other, MemoryPlan) else NotImplemented

    def __ge__(self, other: object) -> bool:
        return self.level >= other.level if isinstance(other, MemoryPlan) else NotImplemented


def escalate(plan: MemoryPlan, *, device_kind: str | None = None) -> MemoryPlan | None:
    """The next plan that saves more memory; None when there is none (on a CPU, offloading is no saving)."""
    plans = list(MemoryPlan)
    if plan.level + 1 >= len(plans):
        return None
    following = plans[plan.level + 1]
    if device_kind == "cpu" and following.offloads:
        return None
    return following


@dataclass(frozen=True)
class ModelFootprint:
    """Bytes of weights (parameters and buffers) per pipeline component."""

    denoiser_bytes: int  # UNet or transformer, with any ControlNet that runs beside it
    text_encoder_bytes: tuple[int, ...] = ()  # one entry per text encoder
    vae_bytes: int = 0
    other_bytes: int = 0  # image encoders and the like

    @property
    def total_bytes(self) -> int:
        return self.denoiser_bytes + sum(self.text_encoder_bytes) + self.vae_bytes + self.other_bytes

    @property
    def largest_component_bytes(self) -> int:
        return max(self.denoiser_bytes, *self.text_encoder_bytes, self.vae_bytes, self.other_bytes)


def footprint_of(pipe) -> ModelFootprint:
    """Measure a loaded diffusers pipeline; meta tensors (sequential offload) still count their real size."""
    denoiser = vae = other = 0
    text_encoders: list[int] = []
    for name, component in pipe.components.items():
        if not isinstance(component, torch.nn.Module):
            continue
        size = sum(t.numel() * t.element_size() for t in (*component.parameters(), *component.buffers()))
        if name in ("unet", "transformer") or "controlnet" in name:
            denoiser += size
        elif name.startswith("text_encoder"):
            text_encoders.append(size)
        elif name == "vae":
            vae += size
        else:
            other += size
    return ModelFootprint(denoiser, tuple(text_encoders), vae, other)


@dataclass(frozen=True)
class ActivationEstimate:
    """Peak bytes of intermediate tensors in each phase; the phases never overlap in time."""

    denoise_bytes: int
    vae_decode_bytes: int  # the whole batch at full size, as a plain decode does it
    vae_decode_tiled_bytes: int  # one image, one tile at a time (tiling + slicing)


@dataclass(frozen=True)
class _FamilyShape:
    latent_channels: int
    attention_stride: int  # image pixels per token, per side, at the highest-resolution attention level
    attention_channels: int
    attention_heads: int
    vae_tile_size: int  # the VAE config's sample_size; diffusers tiles only images larger than this


# SD 1.x/2.x attend at the full latent resolution (1/8) with 320 channels; SDXL skips attention there and first
# attends at 1/16 with 640 channels. The VAE tile is each family's VAE sample_size.
_FAMILY_SHAPES = {
    "sd1": _FamilyShape(latent_channels=4, attention_stride=8, attention_channels=320, attention_heads=8,
                        vae_tile_size=512),
    "sd2": _FamilyShape(latent_channels=4, attention_stride=8, attention_channels=320, attention_heads=5,
                        vae_tile_size=768),
    "sdxl": _FamilyShape(latent_channels=4, attention_stride=16, attention_channels=640, attention_heads=10,
                         vae_tile_size=1024),
    # Flow-matching DiTs (FLUX.1, SD3, Chroma, Qwen-Image...): every block attends over one token per 2x2 latent
    # patch (16 px) at the full hidden width (FLUX.1: 3072, 24 heads); the family registry picks this shape.
    "dit": _FamilyShape(latent_channels=16, attention_stride=16, attention_channels=3072, attention_heads=24,
                        vae_tile_size=1024),
}  # fmt: skip

# Per token at that level, a transformer block's feed-forward alone holds the residual (1) and its norm (1), the
# GEGLU projection (8), GELU of its gate half (4) and the gated product (4), in units of the channel count: 18.
# Measured CPU peaks of the SD 1.5 UNet (batch 2, fp32: 0.40 GB at 512², 1.34 GB at 1024²) are ~1.8x that, from
# attention temporaries and the allocator, so the width used is 32.
_BLOCK_LIVE_WIDTHS = 32
# The VAE decoder's widest full-resolution stage has 256 channels; a ResNet block there keeps its input for the
# skip connection while GroupNorm, SiLU and the convolution each make another such tensor. Four matches measured
# CPU peaks of the SD VAE decoder (fp32: 1.1 GB at 512², 4.1 GB at 1024²).
_VAE_FULL_RES_CHANNELS = 256
_VAE_LIVE_TENSORS = 4
_VAE_SCALE = 8  # image pixels per latent pixel, per side


def estimate_activation_bytes(
    family: str,
    width: int,
    height: int,
    batch: int,
    dtype_bytes: int,
    *,
    vae_dtype_bytes: int | None = None,
    classifier_free_guidance: bool = True,
    memory_efficient_attention: bool = True,
) -> ActivationEstimate:
    """Plain arithmetic for the peak activations of one request, calibrated on CPU against SD 1.5 (within ~20%)."""
    if family not in _FAMILY_SHAPES:
        raise ValueError(f"family must be one of {', '.join(_FAMILY_SHAPES)}; got {family!r}")
    shape = _FAMILY_SHAPES[family]
    vae_bytes = vae_dtype_bytes or dtype_bytes
    # Classifier-free guidance runs the conditional and unconditional halves as one doubled batch.
    denoise_batch = batch * (2 if classifier_free_guidance else 1)

    latent_pixels = (width // _VAE_SCALE) * (height // _VAE_SCALE)
    latents = batch * shape.latent_channels * latent_pixels * 4  # schedulers step in fp32; small, but counted
    tokens = (width // shape.attention_stride) * (height // shape.attention_stride)
    block = denoise_batch * tokens * shape.attention_channels * _BLOCK_LIVE_WIDTHS * dtype_bytes
    # Without SDPA/flash kernels the scores and their softmax are both materialised: heads x tokens x tokens each.
    attention_matrix = (
        0 if memory_efficient_attention else denoise_batch * shape.attention_heads * tokens**2 * 2 * dtype_bytes
    )
    denoise = latents + block + attention_matrix

    full_decode = _vae_decode_bytes(width * height, batch, vae_bytes, memory_efficient_attention)
    tile_pixels = min(width, shape.vae_tile_size) * min(height, shape.vae_tile_size)
    # Decoded tiles overlap by a quarter and are blended, then concatenated: about four RGB copies of each image.
    stitched_images = batch * 3 * width * height * vae_bytes * 4
    tiled_decode = _vae_decode_bytes(tile_pixels, 1, vae_bytes, memory_efficient_attention) + stitched_images
    return ActivationEstimate(denoise, full_decode, min(tiled_decode, full_decode))


def _vae_decode_bytes(pixels: int, batch: int, dtype_bytes: int, memory_efficient_attention: bool) -> int:
    convolutions = batch * pixels * _VAE_FULL_RES_CHANNELS * _VAE_LIVE_TENSORS * dtype_bytes
    # The mid block attends over every latent pixel with one head; quadratic unless SDPA avoids the matrix.
    latent_tokens = pixels // _VAE_SCALE**2
    attention = 0 if memory_efficient_attention else batch * latent_tokens**2 * 2 * dtype_bytes
    return convolutions + attention


DEFAULT_HEADROOM = 0.1  # of total memory: allocator fragmentation, cuDNN workspaces, other processes
MIN_HEADROOM_BYTES = 256 * MIB
# Block-level group offload keeps one block group on the device; SDXL's largest UNet block is ~40% of its weights.
GROUP_OFFLOAD_RESIDENT_FRACTION = 0.5


def choose_memory_plan(
    facts: DeviceFacts,
    footprint: ModelFootprint,
    activations: ActivationEstimate,
    requested: str | MemoryPlan = "auto",
    *,
    headroom: float = DEFAULT_HEADROOM,
    weights_on_device: bool = False,
) -> Choice[MemoryPlan]:
    """The fastest plan whose estimated peak fits the device's free memory, or the requested one.

    `weights_on_device`: `facts` were measured with this model already placed, so its weights count as free.
    """
    name = requested.value if isinstance(requested, MemoryPlan) else requested.strip().lower()
    allowed = ", ".join(plan.value for plan in MemoryPlan)
    if name != "auto" and name not in {plan.value for plan in MemoryPlan}:
        raise ValueError(f"memory plan must be auto, {allowed}; got {requested!r}")

    budget = facts.free_memory_bytes + (footprint.total_bytes if weights_on_device else 0)
    usable = budget - max(MIN_HEADROOM_BYTES, int(headroom * facts.total_memory_bytes))
    needs = _peak_bytes_per_plan(footprint, activations)

    if name != "auto":
        plan = MemoryPlan(name)
        if facts.kind == "cpu" and plan.offloads:
            raise ValueError(
                f"memory plan {plan.value!r} offloads weights to the CPU, which is meaningless on the CPU itself; "
                "use auto, resident or vae_tiling"
            )
        if needs[plan] > usable:
            return Choice(
                plan, f"requested {plan.value}; warning: it needs ~{_gib(needs[plan])}, {_gib(usable)} usable"
            )
        return Choice(plan, f"requested {plan.value}")

    where = f"{_gib(usable)} usable on {facts.name}"
    if facts.kind == "cpu":
        return _cpu_plan(needs, usable, where)
    if needs[MemoryPlan.RESIDENT] <= usable:
        return Choice(
            MemoryPlan.RESIDENT, f"weights and activations (~{_gib(needs[MemoryPlan.RESIDENT])}) fit in {where}"
        )
    if needs[MemoryPlan.VAE_TILING] <= usable:
        return Choice(
            MemoryPlan.VAE_TILING,
            f"only the full-size VAE decode (~{_gib(activations.vae_decode_bytes)}) does not fit in {where}; "
            "decoding in tiles",
        )
    if needs[MemoryPlan.MODEL_OFFLOAD] <= usable:
        return Choice(
            MemoryPlan.MODEL_OFFLOAD,
            f"all weights do not fit but the largest component with its activations "
            f"(~{_gib(needs[MemoryPlan.MODEL_OFFLOAD])}) does, in {where}",
        )
    if needs[MemoryPlan.GROUP_OFFLOAD] <= usable:
        return Choice(
            MemoryPlan.GROUP_OFFLOAD,
            f"the largest component ({_gib(footprint.largest_component_bytes)}) does not fit in {where}; "
            "moving one block at a time",
        )
    shortfall = (
        ""
        if needs[MemoryPlan.SEQUENTIAL_OFFLOAD] <= usable
        else "; even this may run out of memory, lower size or batch"
    )
    return Choice(
        MemoryPlan.SEQUENTIAL_OFFLOAD,
        f"not even one block with its activations fits in {where}; moving one layer at a time{shortfall}",
    )


def _cpu_plan(needs: dict[MemoryPlan, int], usable: int, where: str) -> Choice[MemoryPlan]:
    if needs[MemoryPlan.RESIDENT] <= usable:
        return Choice(
            MemoryPlan.RESIDENT,
            f"weights and activations (~{_gib(needs[MemoryPlan.RESIDENT])}) fit in RAM ({where}); "
            "offloading to the CPU from the CPU would save nothing",
        )
    warning = (
        "" if needs[MemoryPlan.VAE_TILING] <= usable else "; RAM is still short, expect swapping or lower size/batch"
    )
    return Choice(
        MemoryPlan.VAE_TILING,
        f"RAM is short (~{_gib(needs[MemoryPlan.RESIDENT])} needed, {where}); decoding in tiles, "
        f"since offloading to the CPU from the CPU would save nothing{warning}",
    )


def _peak_bytes_per_plan(footprint: ModelFootprint, activations: ActivationEstimate) -> dict[MemoryPlan, int]:
    # Every plan above RESIDENT also tiles the VAE decode (see apply_memory_plan).
    tiled = activations.vae_decode_tiled_bytes
    return {
        MemoryPlan.RESIDENT: footprint.total_bytes + max(activations.denoise_bytes, activations.vae_decode_bytes),
        MemoryPlan.VAE_TILING: footprint.total_bytes + max(activations.denoise_bytes, tiled),
        # One component at a time: the denoiser while denoising, the VAE while decoding, each text encoder alone.
        MemoryPlan.MODEL_OFFLOAD: max(
            footprint.denoiser_bytes + activations.denoise_bytes,
            footprint.vae_bytes + tiled,
            *footprint.text_encoder_bytes,
            footprint.other_bytes,
        ),
        MemoryPlan.GROUP_OFFLOAD: int(GROUP_OFFLOAD_RESIDENT_FRACTION * footprint.largest_component_bytes)
        + max(activations.denoise_bytes, tiled),
        MemoryPlan.SEQUENTIAL_OFFLOAD: max(activations.denoise_bytes, tiled),
    }


def _gib(size: int) -> str:
    return f"{size / GIB:.1f} GiB"


def apply_memory_plan(pipe, plan: MemoryPlan | str, device: str | torch.device) -> None:
    """Place a diffusers pipeline's weights on `device` as `plan` says, undoing any earlier plan first."""
    plan = MemoryPlan(plan)
    device = torch.device(device)
    if plan.offloads and device.type == "cpu":
        raise ValueError(
            f"memory plan {plan.value!r} offloads weights to the CPU and needs an accelerator device; "
            "on cpu use resident or vae_tiling"
        )
    if plan is MemoryPlan.VAE_TILING and not _vae_can_tile(pipe):
        raise ValueError(f"this pipeline's VAE ({type(pipe.vae).__name__}) cannot decode in tiles; use model_offload")
    reset_memory_plan(pipe)
    if not plan.offloads:
        pipe.to(device)
    else:
        # Offload hooks expect every weight in CPU RAM; an out-of-memory error mid-run can leave some on the device.
        pipe.to("cpu", silence_dtype_warnings=True)
        from diffusers.utils.torch_utils import empty_device_cache

        empty_device_cache(device.type)
    if plan is MemoryPlan.MODEL_OFFLOAD:
        pipe.enable_model_cpu_offload(device=device)
    elif plan is MemoryPlan.GROUP_OFFLOAD:
        # Without CUDA streams: streams need pinned copies of every weight, doubling CPU RAM for a little speed.
        pipe.enable_group_offload(
            onload_device=device, offload_device=torch.device("cpu"), offload_type="block_level", num_blocks_per_group=1
        )
    elif plan is MemoryPlan.SEQUENTIAL_OFFLOAD:
        pipe.enable_sequential_cpu_offload(device=device)
    if plan is not MemoryPlan.RESIDENT:
        _set_vae_tiling(pipe, enabled=True)


def reset_memory_plan(pipe) -> None:
    """Remove offload hooks and VAE tiling; weights stay wherever the hooks left them (CPU after offloading)."""
    # accelerate's hooks (model and sequential offload); detaching them restores weights parked on `meta`.
    pipe.remove_all_hooks()
    for component in pipe.components.values():
        if isinstance(component, torch.nn.Module):
            _remove_group_offloading(component)
    _set_vae_tiling(pipe, enabled=False)


def _remove_group_offloading(module: torch.nn.Module) -> None:
    # diffusers 0.42 has no public way to undo enable_group_offload; this removes the hooks by the names diffusers
    # registers them under, as its own `_maybe_remove_and_reapply_group_offloading` does. Imported here, not at the
    # top: diffusers.hooks pulls in peft and transformers (~2 s), which `doctor` and a server's start never need.
    from diffusers.hooks.group_offloading import _GROUP_OFFLOADING, _LAYER_EXECUTION_TRACKER, _LAZY_PREFETCH_GROUP_OFFLOADING

    for submodule in module.modules():
        registry = getattr(submodule, "_diffusers_hook", None)
        if registry is None:
            continue
        for hook_name in (_LAZY_PREFETCH_GROUP_OFFLOADING, _LAYER_EXECUTION_TRACKER, _GROUP_OFFLOADING):
            registry.remove_hook(hook_name, recurse=False)


def _vae_can_tile(pipe) -> bool:
    vae = getattr(pipe, "vae", None)
    return all(
        hasattr(vae, method) for method in ("enable_tiling", "enable_slicing", "disable_tiling", "disable_slicing")
    )


def _set_vae_tiling(pipe, *, enabled: bool) -> None:
    if not _vae_can_tile(pipe):
        if enabled:
            # The offload plans still save memory without it, so this is worth a warning, not a failure.
            log.warning(
                "the VAE (%s) cannot decode in tiles; decoding whole images", type(getattr(pipe, "vae", None)).__name__
            )
        return
    if enabled:
        pipe.vae.enable_tiling()
        pipe.vae.enable_slicing()
    else:
        pipe.vae.disable_tiling()
        pipe.vae.disable_slicing()
