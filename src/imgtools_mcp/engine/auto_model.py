"""`IMGTOOLS_MODEL=auto`: the default model picked for this device and its free memory, with the reason."""

from __future__ import annotations

from .choice import Choice
from .device import DeviceFacts

AUTO = "auto"
GIB = 2**30

# (hub id, family label, bf16 bytes of the whole pipeline resident, why it is picked), fastest useful first.
# Z-Image-Turbo: 6B transformer (12.3 GB) + Qwen3-4B (8 GB) + VAE; FLUX.2 klein 4B: 7.75 GB transformer + Qwen3-4B.
DIT_CHOICES = (
    ("Tongyi-MAI/Z-Image-Turbo", "Z-Image-Turbo", 22 * GIB, "a distilled 8-step DiT with strong prompt following"),
    ("black-forest-labs/FLUX.2-klein-4B", "FLUX.2 klein", 17 * GIB, "a distilled 4-step DiT that also edits by instruction"),
)
SDXL_TURBO = ("stabilityai/sdxl-turbo", 7 * GIB)
SD_TURBO = "stabilityai/sd-turbo"
HEADROOM = 1.15  # activations, the VAE decode and the allocator's slack beyond the weights


def choose_auto_model(facts: DeviceFacts) -> Choice[str]:
    """sd-turbo on a CPU or a small GPU; a distilled DiT where one fits in the accelerator's free memory."""
    free = facts.free_memory_bytes or facts.total_memory_bytes
    if facts.kind == "cpu":
        return Choice(SD_TURBO, "IMGTOOLS_MODEL=auto on a CPU: sd-turbo (1-4 steps at 512 px) is the one that answers in seconds here")
    for model, label, needs, why in DIT_CHOICES:
        if free >= needs * HEADROOM:
            return Choice(model, f"IMGTOOLS_MODEL=auto: {label}, {why}, fits the {free / GIB:.0f} GiB free on {facts.name or facts.kind}")
    if free >= SDXL_TURBO[1] * HEADROOM:
        return Choice(SDXL_TURBO[0], f"IMGTOOLS_MODEL=auto: sdxl-turbo; {free / GIB:.0f} GiB free is too little for a distilled DiT")
    return Choice(SD_TURBO, f"IMGTOOLS_MODEL=auto: sd-turbo; {free / GIB:.1f} GiB free is too little for SDXL or a DiT")
