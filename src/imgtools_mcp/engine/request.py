"""What a run asks the engine for (EngineRequest), the request once checked (ResolvedJob), and what comes back (RunOutput).

"Job" here means one engine call with every default resolved; background work is a task (tasks.py).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from PIL import Image

from .lora import AppliedLora

if TYPE_CHECKING:
    from .families import FamilyInfo
    from .loader import ModelSource
    from .lora import LoraSource

Mode = Literal["txt2img", "img2img", "inpaint", "instruct"]
"""txt2img | img2img | inpaint | instruct (an instruction edit, for families that have one)."""

StepCallback = Callable[[int, int], None]
"""Called from the worker thread after each denoising step with (step, total)."""

ProgressCallback = Callable[[str, float | None, float | None], None]
"""Called from the worker thread with (message, done, total) while a model downloads, loads or converts.

`done`/`total` are in the unit the message names (bytes, components); None when the amount is unknown.
"""


@dataclass(frozen=True)
class LoraWeight:
    name: str
    weight: float


@dataclass
class EngineRequest:
    """What a run asks for; None means "the family's default" (sizes, steps, guidance)."""

    mode: Mode
    model: str | None
    prompt: str
    negative_prompt: str = ""
    width: int | None = None
    height: int | None = None
    steps: int | None = None
    guidance_scale: float | None = None
    sampler: str = "default"
    seeds: list[int] = field(default_factory=lambda: [0])  # one per image, chosen by the run
    strength: float | None = None
    image: Image.Image | None = None
    mask: Image.Image | None = None
    reference_images: list[tuple[Image.Image, float]] = field(default_factory=list)
    loras: list[LoraWeight] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)  # family/feature extras, each refused by check() unless known


@dataclass
class ResolvedJob:
    """`Engine.check()`'s answer: model, family, LoRAs and every default resolved once; `generate()` runs it as is."""

    request: EngineRequest
    source: "ModelSource"
    family: "FamilyInfo"
    loras: list[tuple["LoraSource", float]]
    width: int
    height: int
    steps: int
    guidance_scale: float
    notes: list[str] = field(default_factory=list)  # what the caller should be told (e.g. a parameter ignored)
    controlnets: list[dict[str, Any]] = field(default_factory=list)  # per control entry: the ControlNet it runs with
    warmup: bool = False  # the start-up warm-up (engine/warmup.py), not a user's request

    # Short names for what generate() and the tools read most.
    @property
    def mode(self) -> Mode:
        return self.request.mode

    @property
    def seeds(self) -> list[int]:
        return self.request.seeds

    @property
    def strength(self) -> float | None:
        return self.request.strength

    def used(self) -> dict[str, Any]:
        """The parameters this job runs with, as results and sidecars record them."""
        request = self.request
        used: dict[str, Any] = {
            "prompt": request.prompt,
            "negative_prompt": request.negative_prompt,
            "model": self.source.spec,
            "width": self.width,
            "height": self.height,
            "steps": self.steps,
            "guidance_scale": self.guidance_scale,
            "sampler": request.sampler,
            "seed": request.seeds[0],
            "num_images": len(request.seeds),
            "loras": [{"name": l.name, "weight": l.weight} for l in request.loras],
        }
        if "speed" in request.extra:  # only a step-cache request carries it (engine/step_cache.py)
            used["speed"] = request.extra["speed"]
        if request.strength is not None and request.mode != "instruct":  # instruction edits take no strength
            used["strength"] = request.strength
        return used


@dataclass(frozen=True)
class ModelInfo:
    """The loaded model a run used, as results and engine_status show it."""

    model: str  # the spec it was asked for by
    name: str
    kind: str  # folder | file | hub
    family: str
    turbo: bool
    native_size: int
    inpainting: bool
    device: str
    dtype: str
    memory_plan: str
    backend: str
    backend_reason: str
    weights_bytes: int
    load_seconds: float
    variant: str | None = None  # e.g. turbo, lightning, schnell (the family registry's variant)
    guidance_knob: str = "cfg"  # cfg | distilled | true_cfg | none: what guidance_scale meant for this model

    def as_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "name": self.name,
            "kind": self.kind,
            "family": self.family,
            "turbo": self.turbo,
            "native_size": self.native_size,
            "inpainting": self.inpainting,
            "device": self.device,
            "dtype": self.dtype,
            "memory_plan": self.memory_plan,
            "backend": self.backend,
            "backend_reason": self.backend_reason,
            "weights_bytes": self.weights_bytes,
            "load_seconds": round(self.load_seconds, 3),
            "variant": self.variant,
            "guidance_knob": self.guidance_knob,
        }


@dataclass
class EngineInfo:
    """How a run (or, without a model, the engine) was set up: device, dtype, backend and memory plan, each with why."""

    device: str
    device_name: str
    dtype: str
    dtype_reason: str
    backend: str
    backend_reason: str | None = None
    memory_plan: str | None = None  # None: no model loaded
    memory_plan_reason: str | None = None
    vae_dtype: str | None = None  # shown because it differs from dtype where fp16 would overflow
    backend_components: dict[str, str] = field(default_factory=dict)  # unet / vae_decoder -> backend id
    backend_notes: list[str] = field(default_factory=list)  # conversions, compiles, mid-run fallbacks
    quantization: dict[str, Any] | None = None  # engine/quantize.py: method, reason, components, bytes before/after
    step_cache: dict[str, Any] | None = None  # engine/step_cache.py: speed, method, denoiser passes computed/reused

    def as_dict(self) -> dict[str, Any]:
        info: dict[str, Any] = {
            "device": self.device,
            "device_name": self.device_name,
            "dtype": self.dtype,
            "dtype_reason": self.dtype_reason,
            "backend": self.backend,
            "backend_reason": self.backend_reason,
        }
        if self.memory_plan is not None:
            info["memory_plan"] = self.memory_plan
            info["memory_plan_reason"] = self.memory_plan_reason
        if self.vae_dtype is not None:
            info["vae_dtype"] = self.vae_dtype
        if self.backend_components:
            info["backend_components"] = dict(self.backend_components)
        if self.backend_notes:
            info["backend_notes"] = list(self.backend_notes)
        if self.quantization is not None:
            info["quantization"] = dict(self.quantization)
        if self.step_cache is not None:
            info["step_cache"] = dict(self.step_cache)
        return info


@dataclass
class RunOutput:
    """`Engine.generate()`'s answer."""

    images: list[Image.Image]
    seeds: list[int]
    model: ModelInfo
    sampler_label: str
    steps_run: int
    timings: dict[str, float]
    engine: EngineInfo
    warnings: list[str] = field(default_factory=list)
    loras: list[AppliedLora] = field(default_factory=list)  # as they ran: name, spec, weight, hash, path


__all__ = [
    "AppliedLora",
    "EngineInfo",
    "EngineRequest",
    "LoraWeight",
    "Mode",
    "ModelInfo",
    "ProgressCallback",
    "ResolvedJob",
    "RunOutput",
    "StepCallback",
]
