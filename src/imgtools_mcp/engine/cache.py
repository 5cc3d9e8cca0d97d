"""Loaded pipelines kept between calls within a memory budget (least-recently-used first out), sharing weights across modes.

The cache rule, kept simple on purpose: every loaded pipeline counts its measured weights (plus its
loaded LoRA adapters) against one budget, wherever the memory plan put them. Before a model is
loaded, its size is estimated from its files' headers and least-recently-used models are evicted
until it fits; a model larger than the whole budget still loads, alone. Eviction drops every
reference, collects garbage, empties the device cache and checks (by weak reference) that the
weights were really freed.
"""

from __future__ import annotations

import ctypes
import gc
import logging
import sys
import time
import weakref
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import psutil
import torch

from .choice import Choice
from .device import DeviceFacts
from .families import FamilyInfo
from .loader import ModelSource
from .lora import AdapterSet
from .pipes import from_pipe_keeping_dtypes
from .request import Mode, ModelInfo

log = logging.getLogger(__name__)

# The default budget: this share of the device's memory (system RAM on a CPU); the rest is left for
# activations, the VAE decode and other programs.
DEFAULT_BUDGET_FRACTION = 0.6
EVICTIONS_KEPT = 20
EVENTS_KEPT = 20  # backend events (conversions, compiles) remembered per loaded model


@dataclass
class LoadedModel:
    """One model's pipeline, with its img2img/inpaint variants built on the same component objects."""

    source: ModelSource
    family: FamilyInfo
    base: Any
    scheduler_config: Any
    device: str
    dtype: torch.dtype
    plan: str
    weights_bytes: int
    load_seconds: float
    variants: dict[str, Any] = field(default_factory=dict)
    last_used: float = field(default_factory=time.monotonic)
    plan_reason: str = ""
    adapters: AdapterSet | None = None
    backend: str = "torch"  # the backend chosen for this model; a request it declines runs on torch
    backend_reason: str = ""
    backend_state: dict[str, Any] = field(default_factory=dict)  # per backend id: compiled parts (e.g. OpenVINO)
    backend_events: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=EVENTS_KEPT))
    # Quantization the backend applies to its own converted graphs (nncf_int8 on OpenVINO): a QuantizationReport.
    backend_quantization: Any = None
    # Denoiser shapes (RequestShape.denoiser_shape) this load has run without LoRAs or extra UNet inputs: the ones a
    # compiling backend has compiled. The background warm-up after a load skips a native shape already here.
    shapes_run: set[tuple[int, int, int]] = field(default_factory=set)

    @property
    def memory_bytes(self) -> int:
        """What this model counts against the cache budget: its weights, its loaded LoRA adapters, compiled backend graphs."""
        backend_bytes = sum(getattr(state, "bytes", 0) for state in self.backend_state.values())
        return self.weights_bytes + (self.adapters.bytes if self.adapters else 0) + backend_bytes

    def pipeline(self, mode: Mode) -> Any:
        """The pipeline for a mode; `from_pipe` reuses the loaded modules, so no second copy of the weights."""
        # The family registry names each mode's class; the loaded base serves every mode whose class it is.
        class_name = self.family.pipeline_for(mode)
        if class_name is None or class_name == type(self.base).__name__:
            return self.base
        if mode not in self.variants:
            import diffusers

            # Every shared tensor keeps its own dtype: a VAE held in fp32 where fp16 would overflow, and the float32
            # buffers inside a bf16 module (Qwen-Image's and Z-Image's text encoders' rotary frequencies), which a
            # whole-module cast back would leave rounded, changing every later prompt's embedding.
            variant = from_pipe_keeping_dtypes(getattr(diffusers, class_name), self.base, dtype=self.dtype)
            variant.set_progress_bar_config(disable=True)
            self.variants[mode] = variant
        return self.variants[mode]

    def describe(self) -> ModelInfo:
        return ModelInfo(
            model=self.source.spec,
            name=self.source.name,
            kind=self.source.kind,
            family=self.family.family.value,
            turbo=self.family.turbo,
            native_size=self.family.native_size,
            inpainting=self.family.inpainting,
            device=self.device,
            dtype=str(self.dtype).removeprefix("torch."),
            memory_plan=self.plan,
            backend=self.backend,
            backend_reason=self.backend_reason,
            weights_bytes=self.weights_bytes,
            load_seconds=self.load_seconds,
            variant=self.family.variant.id if self.family.variant else None,
            guidance_knob=self.family.family.guidance_knob,
        )

    def lora_status(self) -> dict[str, Any]:
        adapters = self.adapters
        if adapters is None:
            return {"adapter_bytes": 0, "loras_loaded": [], "loras_active": []}
        names = {a.adapter_name: a.source.name for a in adapters.loaded}
        return {
            "adapter_bytes": adapters.bytes,
            "loras_loaded": [a.source.name for a in adapters.loaded],
            "loras_active": [{"name": names.get(n, n), "weight": w} for n, w in adapters.active],
        }


@dataclass(frozen=True)
class Eviction:
    """One model taken out of memory, with what was measured afterwards."""

    model: str
    weights_bytes: int
    released: bool  # every weight-holding module was garbage-collected (checked by weak reference)
    device_bytes_freed: int | None  # drop in the device allocator's bytes in use (accelerators only)
    rss_bytes_freed: int  # drop in this process's resident memory (noisy: the allocator may keep pages)
    seconds: float
    reason: str

    def as_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "weights_bytes": self.weights_bytes,
            "released": self.released,
            "device_bytes_freed": self.device_bytes_freed,
            "rss_bytes_freed": self.rss_bytes_freed,
            "seconds": round(self.seconds, 3),
            "reason": self.reason,
        }


def default_budget(facts: DeviceFacts) -> Choice[int]:
    """DEFAULT_BUDGET_FRACTION of the device's total memory (system RAM for the CPU)."""
    budget = int(facts.total_memory_bytes * DEFAULT_BUDGET_FRACTION)
    return Choice(
        budget,
        f"{DEFAULT_BUDGET_FRACTION:.0%} of {facts.name}'s {facts.total_memory_bytes / 2**30:.1f} GiB "
        "(set IMGTOOLS_MODEL_CACHE_BYTES to change it)",
    )


def _device_allocated(device: str) -> int | None:
    kind = device.split(":")[0]
    if kind == "cuda" and torch.cuda.is_available():
        return torch.cuda.memory_allocated(device)
    if kind == "xpu" and hasattr(torch, "xpu") and torch.xpu.is_available():
        return torch.xpu.memory_allocated(device)
    if kind == "mps" and torch.backends.mps.is_available():
        return torch.mps.current_allocated_memory()
    return None


def _empty_device_cache(device: str) -> None:
    kind = device.split(":")[0]
    if kind == "cuda" and torch.cuda.is_available():
        torch.cuda.empty_cache()
    elif kind == "xpu" and hasattr(torch, "xpu") and torch.xpu.is_available():
        torch.xpu.empty_cache()
    elif kind == "mps" and torch.backends.mps.is_available():
        torch.mps.empty_cache()


def _return_heap_to_os() -> None:
    """glibc keeps freed heap pages for reuse; malloc_trim hands them back so RSS really drops after an eviction."""
    if not sys.platform.startswith("linux"):
        return
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass  # another libc (musl): nothing to trim with, and the memory is still reusable by this process


def weights_bytes(pipe: Any) -> int:
    total = 0
    for component in pipe.components.values():
        if isinstance(component, torch.nn.Module):
            total += sum(t.numel() * t.element_size() for t in component.parameters())
            total += sum(t.numel() * t.element_size() for t in component.buffers())
    return total


class PipelineCache:
    """Pipelines by model key, evicting the least recently used when a new one would exceed the budget.

    `budget_bytes` None means no byte limit; `max_models` None means no count limit.
    """

    def __init__(self, max_models: int | None = None, budget_bytes: int | None = None) -> None:
        self.max_models = max_models
        self.budget_bytes = budget_bytes
        self._models: OrderedDict[str, LoadedModel] = OrderedDict()
        self.evictions: deque[Eviction] = deque(maxlen=EVICTIONS_KEPT)

    def __contains__(self, key: str) -> bool:
        return key in self._models

    def get(self, key: str) -> LoadedModel | None:
        model = self._models.get(key)
        if model is not None:
            self._models.move_to_end(key)
            model.last_used = time.monotonic()
        return model

    def loaded(self) -> list[LoadedModel]:
        return list(self._models.values())

    def _over(self, incoming_bytes: int, counting_incoming: bool) -> bool:
        count = len(self._models) + (1 if counting_incoming else 0)
        if self.max_models is not None and count > self.max_models:
            return True
        return self.budget_bytes is not None and self.used_bytes() + incoming_bytes > self.budget_bytes

    def make_room(self, incoming_bytes: int, keep: str | None = None) -> list[Eviction]:
        """Evict least-recently-used models (never `keep`) until one more of `incoming_bytes` fits.

        With `keep` set, the model is already in the cache and `incoming_bytes` is usually 0: this
        trims the others after a load measured larger than its estimate.
        """
        evicted = []
        while True:
            candidates = [key for key in self._models if key != keep]
            if not candidates or not self._over(incoming_bytes, counting_incoming=keep is None):
                break
            evicted.append(self.evict(candidates[0], reason=f"making room for {incoming_bytes / 2**20:.0f} MiB"))
        return evicted

    def put(self, key: str, model: LoadedModel) -> None:
        self._models[key] = model
        self._models.move_to_end(key)

    def used_bytes(self) -> int:
        return sum(m.memory_bytes for m in self._models.values())

    def evict(self, key: str, on_evict: Callable[[LoadedModel], None] | None = None, reason: str = "") -> Eviction | None:
        model = self._models.pop(key, None)
        if model is None:
            return None
        started = time.perf_counter()
        log.info("evicting %s (%d MiB)%s", model.source.spec, model.memory_bytes // 2**20, f": {reason}" if reason else "")
        process = psutil.Process()
        rss_before = process.memory_info().rss
        device_before = _device_allocated(model.device)
        modules = [c for c in model.base.components.values() if isinstance(c, torch.nn.Module)] if model.base else []
        watchers = [weakref.ref(module) for module in modules]
        del modules
        if on_evict:
            on_evict(model)
        if model.base is not None and hasattr(model.base, "remove_all_hooks"):
            # Offload hooks hold the modules from the other side; without them the cycle is simpler to collect.
            model.base.remove_all_hooks()
        spec, size, device = model.source.spec, model.memory_bytes, model.device
        model.variants.clear()
        model.base = None
        model.adapters = None
        model.backend_state.clear()
        del model
        # Pipelines hold reference cycles (hooks, configs); collect now so the memory is really returned.
        gc.collect()
        _empty_device_cache(device)
        _return_heap_to_os()
        released = all(watcher() is None for watcher in watchers)
        if not released:
            alive = sum(1 for watcher in watchers if watcher() is not None)
            log.warning("evicted %s but %d of its modules are still referenced; their memory is not freed", spec, alive)
        device_after = _device_allocated(device)
        eviction = Eviction(
            model=spec,
            weights_bytes=size,
            released=released,
            device_bytes_freed=None if device_before is None or device_after is None else device_before - device_after,
            rss_bytes_freed=rss_before - process.memory_info().rss,
            seconds=time.perf_counter() - started,
            reason=reason,
        )
        self.evictions.append(eviction)
        return eviction
