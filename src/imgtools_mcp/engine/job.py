"""What the engine runs (a request with every default resolved) and what it hands back."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from PIL import Image

from .cache import Mode

StepCallback = Callable[[int, int], None]
"""Called from the worker thread after each denoising step with (step, total)."""


@dataclass
class LoraWeight:
    name: str
    weight: float


@dataclass
class GenerationJob:
    mode: Mode
    model: str
    prompt: str
    negative_prompt: str
    width: int
    height: int
    steps: int
    guidance_scale: float
    sampler: str
    seeds: list[int]
    strength: float | None = None
    image: Image.Image | None = None
    mask: Image.Image | None = None
    loras: list[LoraWeight] = field(default_factory=list)


@dataclass
class RunOutput:
    images: list[Image.Image]
    seeds: list[int]
    model: dict[str, Any]
    sampler_label: str
    steps_run: int
    timings: dict[str, float]
    engine: dict[str, Any]
    warnings: list[str] = field(default_factory=list)
    loras: list[dict[str, Any]] = field(default_factory=list)  # as they ran: name, spec, weight, hash, path
