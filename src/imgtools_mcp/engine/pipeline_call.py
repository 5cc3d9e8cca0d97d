"""The one place that turns a resolved job into the arguments of the diffusers pipeline call, as the family declares."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

    from .cache import LoadedModel
    from .request import ResolvedJob

StepEnd = Callable[[Any, int, Any, dict[str, Any]], dict[str, Any]]
"""diffusers' `callback_on_step_end(pipeline, step, timestep, callback_kwargs)`."""

CLIP_TOKENS = 77


def _accepts(pipe: Any, name: str) -> bool:
    try:
        return name in inspect.signature(pipe.__call__).parameters
    except (TypeError, ValueError):
        return False


def pipeline_kwargs(
    job: "ResolvedJob", model: "LoadedModel", generators: list["torch.Generator"], step_end: StepEnd
) -> dict[str, Any]:
    """Keyword arguments for `model.pipeline(job.mode)(**kwargs)`; `generators` has one per image."""
    request = job.request
    spec = job.family.family
    pipe = model.pipeline(job.mode)
    kwargs: dict[str, Any] = dict(
        prompt=request.prompt,
        num_inference_steps=job.steps,
        num_images_per_prompt=len(request.seeds),
        generator=generators,
        callback_on_step_end=step_end,
        output_type="pil",
    )
    # Families without classifier-free guidance have no use for a negative prompt (check() noted it).
    if spec.negative_prompt:
        kwargs["negative_prompt"] = request.negative_prompt or None
    # The family's one guidance knob: CFG and FLUX's distilled guidance both arrive as `guidance_scale`,
    # Qwen-Image's true CFG as `true_cfg_scale`.
    if spec.guidance_kwarg is not None:
        kwargs[spec.guidance_kwarg] = job.guidance_scale
    # T5/LLM-conditioned families read up to their token limit (FLUX.1 schnell: 256, dev: 512).
    if job.family.token_limit > CLIP_TOKENS and _accepts(pipe, "max_sequence_length"):
        kwargs["max_sequence_length"] = job.family.token_limit
    if job.mode == "txt2img":
        kwargs.update(width=job.width, height=job.height)
    elif job.mode == "img2img":
        assert request.image is not None
        # SD img2img pipelines take their size from the image; the DiT ones default to their native size.
        kwargs.update(image=request.image.resize((job.width, job.height)), strength=request.strength)
        if _accepts(pipe, "width"):
            kwargs.update(width=job.width, height=job.height)
    elif job.mode == "inpaint":
        assert request.image is not None and request.mask is not None
        kwargs.update(
            image=request.image, mask_image=request.mask, width=job.width, height=job.height, strength=request.strength
        )
    elif job.mode == "instruct":
        assert request.image is not None
        # The instruction is the prompt; the image (and any reference images) are the model's own inputs.
        image = request.image.convert("RGB").resize((job.width, job.height))
        if spec.max_reference_images > 0:
            kwargs["image"] = [image, *(ref.convert("RGB") for ref, _ in request.reference_images)]
        else:
            kwargs["image"] = image
        kwargs.update(width=job.width, height=job.height)
    else:
        raise ValueError(f"mode: {job.mode!r} has no pipeline call for the {spec.label} family")
    if request.reference_images and job.mode != "instruct":
        # Native reference images outside an instruction edit: FLUX.2's `image` list, klein inpaint's `image_reference`.
        from .references import route_for

        route = route_for(spec, job.mode, job.family.pipeline_for(job.mode))
        assert route is not None and route.kwarg is not None  # check() refused every other case
        references = [ref.convert("RGB") for ref, _ in request.reference_images]
        kwargs[route.kwarg] = references if route.kwarg == "image" else references[0]
    if spec.call_kwargs is not None:
        kwargs = spec.call_kwargs(job, kwargs)
    return kwargs
