"""How a family takes `reference_images` in a mode: as its own pipeline input (native) or through an IP-Adapter.

One answer for the run (which inputs to prepare), the engine's check (limits) and the pipeline call (which argument).
"""

from __future__ import annotations

import functools
import inspect
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from . import ip_adapter

if TYPE_CHECKING:
    from .families.base import FamilySpec

Mechanism = Literal["native", "ip-adapter"]


@dataclass(frozen=True)
class ReferenceRoute:
    mechanism: Mechanism
    limit: int  # reference images the route takes (besides `image` for an instruction edit)
    kwarg: str | None = None  # native: the pipeline argument they go to


@functools.cache
def _pipeline_takes(class_name: str, what: str) -> bool:
    import diffusers

    cls = getattr(diffusers, class_name, None)
    if cls is None:
        return False
    if what == "load_ip_adapter":
        return hasattr(cls, "load_ip_adapter")
    try:
        return what in inspect.signature(cls.__call__).parameters
    except (TypeError, ValueError):
        return False


def route_for(spec: "FamilySpec", mode: str, pipeline_class: str | None) -> ReferenceRoute | None:
    """None when the family has no way to use reference images in `mode`."""
    if pipeline_class is None:
        return None
    if spec.max_reference_images > 0:
        if mode == "instruct":
            return ReferenceRoute("native", spec.max_reference_images, "image")
        # FLUX.2's text-to-image pipeline is the multi-reference one: with no input image every slot is a reference.
        if mode == "txt2img" and pipeline_class == spec.pipeline_for("instruct"):
            return ReferenceRoute("native", spec.max_reference_images + 1, "image")
        if mode == "inpaint" and _pipeline_takes(pipeline_class, "image_reference"):
            return ReferenceRoute("native", 1, "image_reference")  # FLUX.2 klein inpaint: what the masked area shows
    if spec.id in ip_adapter.DEFAULT_IP_ADAPTERS and _pipeline_takes(pipeline_class, "load_ip_adapter"):
        return ReferenceRoute("ip-adapter", 8)
    return None


def families_that_can(mode: str) -> str:
    """'natively: ...; through IP-Adapter: ...' for the families with a route in `mode`, for errors."""
    from .families import registry

    by_mechanism: dict[str, list[str]] = {"native": [], "ip-adapter": []}
    for spec in registry.all():
        route = route_for(spec, mode, spec.pipeline_for(mode))
        if route is not None:
            by_mechanism[route.mechanism].append(spec.label)
    parts = [f"natively: {', '.join(by_mechanism['native'])}" if by_mechanism["native"] else "",
             f"through IP-Adapter: {', '.join(by_mechanism['ip-adapter'])}" if by_mechanism["ip-adapter"] else ""]
    return "; ".join(p for p in parts if p) or "none"
