"""Sampler short names (as SD.Next/A1111 users know them) mapped to diffusers schedulers."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from diffusers.schedulers.scheduling_utils import SchedulerMixin


@dataclass(frozen=True)
class SamplerSpec:
    class_name: str  # a diffusers scheduler, imported when first built (importing diffusers takes seconds)
    label: str  # the A1111 infotext name
    overrides: dict[str, Any] = field(default_factory=dict)

    @property
    def scheduler_cls(self) -> type["SchedulerMixin"]:
        import diffusers

        return getattr(diffusers, self.class_name)


SAMPLERS: dict[str, SamplerSpec] = {
    "euler": SamplerSpec("EulerDiscreteScheduler", "Euler"),
    "euler_a": SamplerSpec("EulerAncestralDiscreteScheduler", "Euler a"),
    "dpmpp_2m": SamplerSpec(
        "DPMSolverMultistepScheduler", "DPM++ 2M", {"algorithm_type": "dpmsolver++", "solver_order": 2}
    ),
    "dpmpp_2m_karras": SamplerSpec(
        "DPMSolverMultistepScheduler",
        "DPM++ 2M Karras",
        {"algorithm_type": "dpmsolver++", "solver_order": 2, "use_karras_sigmas": True},
    ),
    "ddim": SamplerSpec("DDIMScheduler", "DDIM"),
    "unipc": SamplerSpec("UniPCMultistepScheduler", "UniPC"),
    "lcm": SamplerSpec("LCMScheduler", "LCM"),
}
SAMPLER_NAMES: tuple[str, ...] = (*SAMPLERS, "default")
_LABEL_TO_NAME = {spec.label: name for name, spec in SAMPLERS.items()}


# Flow-matching models (SD3, FLUX, Chroma, Qwen-Image, ...) predict a velocity along a straight path from noise;
# only schedulers that step such a path fit. Each is built from the model's own FlowMatch config, so its shift
# (fixed, or resolution-dependent through the `mu` the pipeline passes) is the model's.
FLOW_SAMPLERS: dict[str, SamplerSpec] = {
    "euler": SamplerSpec("FlowMatchEulerDiscreteScheduler", "Euler"),
    "unipc": SamplerSpec("UniPCMultistepScheduler", "UniPC"),
}
# DPM++ is left out: its set_timesteps takes no custom sigmas, which every flow img2img/inpaint pipeline passes.


def _flow_overrides(base_config: Any) -> dict[str, Any]:
    """UniPC/DPM++ in their flow-matching form with the model's shift."""
    get = base_config.get if hasattr(base_config, "get") else lambda key, default=None: getattr(base_config, key, default)
    overrides: dict[str, Any] = {
        "prediction_type": "flow_prediction",
        "use_flow_sigmas": True,
        "flow_shift": get("shift", 1.0) or 1.0,
        "use_dynamic_shifting": bool(get("use_dynamic_shifting", False)),
    }
    if get("time_shift_type"):
        overrides["time_shift_type"] = get("time_shift_type")
    return overrides


# Flow img2img and inpaint pipelines noise the input with FlowMatchEuler's own `scale_noise`.
FLOW_NOISING_MODES = ("img2img", "inpaint")


def check_sampler(name: str, kind: str, family_label: str, fitting: tuple[str, ...], mode: str = "txt2img") -> None:
    """Refuse a sampler that does not fit the family (and mode), naming those that do (one line, for the tool error)."""
    if name == "default":
        return
    known: dict[str, SamplerSpec] = FLOW_SAMPLERS if kind == "flow" else SAMPLERS
    if kind == "flow" and mode in FLOW_NOISING_MODES:
        known = {"euler": FLOW_SAMPLERS["euler"]}
    if name not in SAMPLERS and name not in FLOW_SAMPLERS:
        raise ValueError(f"sampler: unknown {name!r}; allowed: {', '.join(SAMPLER_NAMES)}")
    fitting = tuple(n for n in fitting if n in known) or tuple(known)
    if name not in fitting:
        what = "a flow-matching model" if kind == "flow" else "a noise-schedule model"
        if kind == "flow" and mode in FLOW_NOISING_MODES:
            what += f", whose {mode} pipeline noises the input the FlowMatch Euler way"
        raise ValueError(f"sampler: {name!r} does not fit {family_label} ({what}); use one of: default, {', '.join(fitting)}")


def make_scheduler(name: str, base_config: Any, kind: str = "discrete") -> "SchedulerMixin | None":
    """A fresh scheduler for one request built from the model's own config; None for `default`."""
    if name == "default":
        return None
    if kind == "flow":
        try:
            spec = FLOW_SAMPLERS[name]
        except KeyError:
            raise ValueError(f"sampler: {name!r} does not fit a flow-matching model; use one of: default, {', '.join(FLOW_SAMPLERS)}") from None
        if spec.class_name == "FlowMatchEulerDiscreteScheduler":
            return spec.scheduler_cls.from_config(base_config)
        return spec.scheduler_cls.from_config(base_config, **spec.overrides, **_flow_overrides(base_config))
    try:
        spec = SAMPLERS[name]
    except KeyError:
        raise ValueError(f"sampler: unknown {name!r}; allowed: {', '.join(SAMPLER_NAMES)}") from None
    return spec.scheduler_cls.from_config(base_config, **spec.overrides)


# A1111's names for schedulers a model may ship with that no short name here builds.
_A1111_CLASS_LABELS = {
    "PNDMScheduler": "PLMS",
    "DDPMScheduler": "DDPM",
    "LMSDiscreteScheduler": "LMS",
    "HeunDiscreteScheduler": "Heun",
    "KDPM2DiscreteScheduler": "DPM2",
    "KDPM2AncestralDiscreteScheduler": "DPM2 a",
    "DPMSolverSinglestepScheduler": "DPM++ SDE",
    "DEISMultistepScheduler": "DEIS",
}


def sampler_label(name: str, default_scheduler_class: str) -> str:
    """The infotext `Sampler:` value as A1111/SD.Next write it ("Euler", not "EulerDiscrete"), also for the model's
    own scheduler when the request said `default`."""
    if name == "default":
        by_class: dict[str, str] = {}
        for spec in (*SAMPLERS.values(), *FLOW_SAMPLERS.values()):
            # The first label per class is its plain form ("DPM++ 2M", not the Karras variant).
            by_class.setdefault(spec.class_name, spec.label)
        return (
            by_class.get(default_scheduler_class)
            or _A1111_CLASS_LABELS.get(default_scheduler_class)
            or default_scheduler_class.removesuffix("Scheduler")
        )
    return (SAMPLERS.get(name) or FLOW_SAMPLERS[name]).label


def sampler_from_label(label: str) -> str:
    return _LABEL_TO_NAME.get(label, "default")
