"""What `Engine.status()` reports (device, choices, loaded models, cache, queue), as dataclasses with `as_dict()` for JSON."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .cache import Eviction
from .request import ModelInfo


@dataclass(frozen=True)
class PlannedMemoryInfo:
    """The memory plan a model would get, estimated from its files without loading it."""

    model: str
    memory_plan: str
    reason: str
    estimated_weights_bytes: int
    at_size: str  # "WxH" the estimate is for

    def as_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "memory_plan": self.memory_plan,
            "reason": self.reason,
            "estimated_weights_bytes": self.estimated_weights_bytes,
            "at_size": self.at_size,
        }


@dataclass(frozen=True)
class LoadedModelInfo:
    """One loaded model: what a run reports about it, plus what it holds in memory now."""

    model: ModelInfo
    memory_plan_reason: str
    memory_bytes: int  # weights + LoRA adapters + compiled backend graphs: what counts against the budget
    idle_s: float
    adapter_bytes: int
    loras_loaded: list[str]
    loras_active: list[dict[str, Any]]  # name, weight
    quantization: dict[str, Any] | None = None  # engine/quantize.py QuantizationReport.as_dict(), when quantized

    def as_dict(self) -> dict[str, Any]:
        return {
            **({"quantization": dict(self.quantization)} if self.quantization else {}),
            **self.model.as_dict(),
            "memory_plan_reason": self.memory_plan_reason,
            "memory_bytes": self.memory_bytes,
            "idle_s": self.idle_s,
            "adapter_bytes": self.adapter_bytes,
            "loras_loaded": list(self.loras_loaded),
            "loras_active": [dict(a) for a in self.loras_active],
        }


@dataclass(frozen=True)
class CacheInfo:
    budget_bytes: int | None
    budget_reason: str
    used_bytes: int
    evictions: list[Eviction]  # most recent last

    def as_dict(self) -> dict[str, Any]:
        return {
            "budget_bytes": self.budget_bytes,
            "budget_reason": self.budget_reason,
            "used_bytes": self.used_bytes,
            "evictions": [e.as_dict() for e in self.evictions],
        }


@dataclass(frozen=True)
class EngineStatusInfo:
    """The engine now; `as_dict()` has the shape of engine_status's output (less what the server adds)."""

    device: str
    device_name: str
    dtype: str
    dtype_reason: str
    backend: str  # what a model of the default's family would run on
    backend_reason: str | None
    backends: dict[str, Any]  # every backend: available here, and why not
    device_total_bytes: int
    device_free_bytes: int
    memory_setting: str
    default_model_plan: PlannedMemoryInfo | None  # only while nothing is loaded
    cache: CacheInfo
    loaded_models: list[LoadedModelInfo]
    queue_length: int
    max_queue: int
    running: str | None  # "mode:model" on the device now
    running_s: float | None
    replicas: list[dict[str, Any]] = field(default_factory=list)  # remote engines (Ray) fill it; empty locally
    default_model: str | None = None  # what IMGTOOLS_MODEL resolves to (auto: picked for this device)
    default_model_reason: str | None = None
    warmup: dict[str, Any] | None = None  # engine/warmup.py Warmup.as_dict(): start-up load and run of the default model

    def as_dict(self) -> dict[str, Any]:
        return {
            "device": self.device,
            "device_name": self.device_name,
            "dtype": self.dtype,
            "dtype_reason": self.dtype_reason,
            "backend": self.backend,
            "backend_reason": self.backend_reason,
            "backends": self.backends,
            "device_total_bytes": self.device_total_bytes,
            "device_free_bytes": self.device_free_bytes,
            "memory_setting": self.memory_setting,
            "default_model_plan": self.default_model_plan.as_dict() if self.default_model_plan else None,
            "cache": self.cache.as_dict(),
            "loaded_models": [m.as_dict() for m in self.loaded_models],
            "queue_length": self.queue_length,
            "max_queue": self.max_queue,
            "running": self.running,
            "running_s": self.running_s,
            "replicas": [dict(r) for r in self.replicas],
            "default_model": self.default_model,
            "default_model_reason": self.default_model_reason,
            "warmup": dict(self.warmup) if self.warmup is not None else None,
        }
