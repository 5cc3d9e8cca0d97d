"""The one place that turns a resolved job into the arguments of the diffusers pipeline call."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

    from .cache import LoadedModel
    from .request import ResolvedJob

StepEnd = Callable[[Any, int, Any, dict[str, Any]], dict[str, Any]]
"""diffusers' `callback_on_step_end(pipeline, step, timestep, callback_kwargs)`."""


def pipeline_kwargs(
    job: "ResolvedJob", model: "LoadedModel", generators: list["torch.Generator"], step_end: StepEnd
) -> dict[str, Any]:
    """Keyword arguments for `model.pipeline(job.mode)(**kwargs)`; `generators` has one per image."""
    request = job.request
    kwargs: dict[str, Any] = dict(
        prompt=request.prompt,
        negative_prompt=request.negative_prompt or None,
        num_inference_steps=job.steps,
        guidance_scale=job.guidance_scale,
        num_images_per_prompt=len(request.seeds),
        generator=generators,
        callback_on_step_end=step_end,
        output_type="pil",
    )
    if job.mode == "txt2img":
        kwargs.update(width=job.width, height=job.height)
    elif job.mode == "img2img":
        assert request.image is not None
        # img2img pipelines take their size from the image.
        kwargs.update(image=request.image.resize((job.width, job.height)), strength=request.strength)
    elif job.mode == "inpaint":
        assert request.image is not None and request.mask is not None
        kwargs.update(
            image=request.image, mask_image=request.mask, width=job.width, height=job.height, strength=request.strength
        )
    else:
        raise ValueError(f"mode: {job.mode!r} has no pipeline call for the {job.family.family.label} family")
    return kwargs
