"""Sampler short names (as SD.Next/A1111 users know them) mapped to diffusers schedulers."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from diffusers import (
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    LCMScheduler,
    UniPCMultistepScheduler,
)
from diffusers.schedulers.scheduling_utils import SchedulerMixin


@dataclass(frozen=True)
class SamplerSpec:
    scheduler_cls: type[SchedulerMixin]
    label: str  # the A1111 infotext name
    overrides: dict[str, Any] = field(default_factory=dict)


SAMPLERS: dict[str, SamplerSpec] = {
    "euler": SamplerSpec(EulerDiscreteScheduler, "Euler"),
    "euler_a": SamplerSpec(EulerAncestralDiscreteScheduler, "Euler a"),
    "dpmpp_2m": SamplerSpec(
        DPMSolverMultistepScheduler, "DPM++ 2M", {"algorithm_type": "dpmsolver++", "solver_order": 2}
    ),
    "dpmpp_2m_karras": SamplerSpec(
        DPMSolverMultistepScheduler,
        "DPM++ 2M Karras",
        {"algorithm_type": "dpmsolver++", "solver_order": 2, "use_karras_sigmas": True},
    ),
    "ddim": SamplerSpec(DDIMScheduler, "DDIM"),
    "unipc": SamplerSpec(UniPCMultistepScheduler, "UniPC"),
    "lcm": SamplerSpec(LCMScheduler, "LCM"),
}
SAMPLER_NAMES: tuple[str, ...] = (*SAMPLERS, "default")
_LABEL_TO_NAME = {spec.label: name for name, spec in SAMPLERS.items()}


def make_scheduler(name: str, base_config: Any) -> SchedulerMixin | None:
    """A fresh scheduler for one request built from the model's own config; None for `default`."""
    if name == "default":
        return None
    try:
        spec = SAMPLERS[name]
    except KeyError:
        raise ValueError(f"sampler: unknown {name!r}; allowed: {', '.join(SAMPLER_NAMES)}") from None
    return spec.scheduler_cls.from_config(base_config, **spec.overrides)


def sampler_label(name: str, default_scheduler_class: str) -> str:
    if name == "default":
        return default_scheduler_class.replace("Scheduler", "")
    return SAMPLERS[name].label


def sampler_from_label(label: str) -> str:
    return _LABEL_TO_NAME.get(label, "default")
