"""Loaded pipelines kept between calls (least-recently-used first out), sharing weights across modes."""

from __future__ import annotations

import gc
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from .families import FamilyInfo
from .loader import ModelSource

log = logging.getLogger(__name__)

Mode = Literal["txt2img", "img2img", "inpaint"]


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

    def pipeline(self, mode: Mode) -> Any:
        """The pipeline for a mode; `from_pipe` reuses the loaded modules, so no second copy of the weights."""
        if mode == "txt2img":
            return self.base
        if mode not in self.variants:
            from diffusers import AutoPipelineForImage2Image, AutoPipelineForInpainting

            cls = AutoPipelineForImage2Image if mode == "img2img" else AutoPipelineForInpainting
            variant = cls.from_pipe(self.base)
            variant.set_progress_bar_config(disable=True)
            self.variants[mode] = variant
        return self.variants[mode]

    def describe(self) -> dict[str, Any]:
        return {
            "model": self.source.spec,
            "name": self.source.name,
            "kind": self.source.kind,
            **self.family.as_dict(),
            "device": self.device,
            "dtype": str(self.dtype).removeprefix("torch."),
            "memory_plan": self.plan,
            "weights_bytes": self.weights_bytes,
            "load_seconds": round(self.load_seconds, 3),
        }


def weights_bytes(pipe: Any) -> int:
    total = 0
    for component in pipe.components.values():
        if isinstance(component, torch.nn.Module):
            total += sum(t.numel() * t.element_size() for t in component.parameters())
            total += sum(t.numel() * t.element_size() for t in component.buffers())
    return total


class PipelineCache:
    """Pipelines by model key, evicting the least recently used when a new one would exceed the budget."""

    def __init__(self, max_models: int = 2, budget_bytes: int | None = None) -> None:
        self.max_models = max_models
        self.budget_bytes = budget_bytes
        self._models: OrderedDict[str, LoadedModel] = OrderedDict()

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

    def make_room(self, incoming_bytes: int) -> list[str]:
        """Evict until one more model of `incoming_bytes` fits; returns the evicted keys."""
        evicted = []
        while self._models and (
            len(self._models) >= self.max_models
            or (self.budget_bytes is not None and self.used_bytes() + incoming_bytes > self.budget_bytes)
        ):
            key, _ = next(iter(self._models.items()))
            self.evict(key)
            evicted.append(key)
        return evicted

    def put(self, key: str, model: LoadedModel) -> None:
        self._models[key] = model
        self._models.move_to_end(key)

    def used_bytes(self) -> int:
        return sum(m.weights_bytes for m in self._models.values())

    def evict(self, key: str, on_evict: Callable[[LoadedModel], None] | None = None) -> None:
        model = self._models.pop(key, None)
        if model is None:
            return
        log.info("evicting %s (%d MB)", model.source.spec, model.weights_bytes // 2**20)
        if on_evict:
            on_evict(model)
        model.variants.clear()
        model.base = None
        del model
        # Pipelines hold reference cycles (hooks, configs); collect now so the memory is really returned.
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
