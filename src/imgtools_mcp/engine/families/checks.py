"""Request checks every family shares, read from its spec: modes, sizes, samplers, reference images, what does not apply."""

from __future__ import annotations

from typing import Any

from ..errors import InvalidRequestError
from . import registry
from .base import FamilyInfo

MODE_WORDS = {
    "txt2img": "text-to-image generation is",
    "img2img": "img2img editing is",
    "inpaint": "inpainting is",
    "instruct": "instruction editing is",
}


def check_family_request(family: FamilyInfo, request: Any, width: int, height: int) -> list[str]:
    """Refuse what the family cannot run (raising InvalidRequestError naming the parameter); return notes for the result."""
    from ..samplers import check_sampler

    spec = family.family
    notes: list[str] = []
    mode = request.mode
    if family.pipeline_for(mode) is None:
        can = ", ".join(s.label for s in registry.supporting(mode)) or "none"
        hint = {"instruct": "use edit without an instruction-edit model (img2img) or inpaint"}.get(mode, "pick another model")
        raise InvalidRequestError(
            "model" if mode != "instruct" else "mode",
            f"{MODE_WORDS.get(mode, mode + ' is')} not available for {spec.label} models (families that can: {can}); {hint}",
        )
    multiple = spec.size_multiple
    if width % multiple or height % multiple:
        raise InvalidRequestError(
            "width/height", f"{spec.label} needs multiples of {multiple} (got {width}x{height})"
        )
    try:
        check_sampler(request.sampler, spec.sampler_kind, spec.label, spec.samplers, mode)
    except ValueError as exc:
        raise InvalidRequestError("sampler", str(exc).removeprefix("sampler: ")) from None
    if getattr(request, "loras", None) and not spec.lora:
        raise InvalidRequestError("loras", f"{spec.label} models take no LoRAs here")
    references = list(getattr(request, "reference_images", []) or [])
    if references:
        # Native reference images (the model's own inputs); IP-Adapter ones arrive as extra["ip_adapter"].
        from ..references import families_that_can, route_for

        route = route_for(spec, mode, family.pipeline_for(mode))
        if route is None or route.mechanism != "native":
            raise InvalidRequestError(
                "reference_images",
                f"{spec.label} models take no reference images here (families that do: {families_that_can(mode)})",
            )
        if len(references) > route.limit:
            besides = " besides `image`" if mode == "instruct" else ""
            raise InvalidRequestError(
                "reference_images", f"{spec.label} takes at most {route.limit} reference image(s){besides} (got {len(references)})"
            )
    if request.negative_prompt and not spec.negative_prompt:
        notes.append(f"negative_prompt does not apply to {spec.label} (no classifier-free guidance); it was not used")
    if mode == "instruct" and request.strength is not None:
        notes.append("strength does not apply to instruction edits; the model sees the whole image and the instruction")
    return notes
