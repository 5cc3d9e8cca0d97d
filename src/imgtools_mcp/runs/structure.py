"""Structure and finishing on the image runs: `control` (ControlNet maps, saved as outputs), `hires` (A1111's hires fix)
and `mask_prompt` (a mask the VLM finds). MCP-free; the image run calls these around its engine request."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import anyio
from PIL import Image

from ..engine.control import ControlInput
from ..images.control_maps import ControlMapError, ControlModels, make_control_map
from ..params_structure import ControlRequest, HiresRequest
from .context import RunInputError

if TYPE_CHECKING:
    from ..engine.request import ResolvedJob
    from .context import RunContext
    from .progress import ProgressRelay

@dataclass
class ControlPlan:
    """The maps the run made (and saved), ready for the engine, with what to record about them."""

    inputs: list[ControlInput] = field(default_factory=list)
    parameters: list[dict[str, Any]] = field(default_factory=list)
    infotext: dict[str, Any] = field(default_factory=dict)
    map_ids: list[str] = field(default_factory=list)


async def prepare_controls(ctx: "RunContext", controls: list[ControlRequest]) -> ControlPlan:
    """Resolve each control image, make its map (OpenCV/depth/pose models off the event loop) and save the map as an output."""
    plan = ControlPlan()
    models = ctx.control_models or ControlModels.from_settings(ctx.settings, offline=ctx.engine.offline)
    for index, control in enumerate(controls):
        param = f"control[{index}]"
        resolved = await ctx.resolver.resolve(control.image, param=f"{param}.image")
        try:
            made: Image.Image = await anyio.to_thread.run_sync(
                lambda: make_control_map(
                    control.type, resolved.image, depth=models.depth, pose=models.pose, param=f"{param}.type"
                )
            )
        except ControlMapError as exc:
            raise RunInputError(str(exc)) from exc
        metadata = {"tool": "control_map", "control": {"type": control.type, "source": resolved.reference[:160]}}
        text = f"control map: {control.type} of {resolved.reference[:80]}"
        stored = await anyio.to_thread.run_sync(lambda: ctx.store.save(made, text, metadata))
        plan.inputs.append(ControlInput(control.type, made, control.weight, control.start, control.end, control.model))
        plan.map_ids.append(stored.id)
        plan.parameters.append({**control.model_dump(), "image": resolved.reference[:160], "map": stored.id, "map_uri": stored.uri})
        # sd-webui-controlnet's infotext entry, which A1111 and SD.Next read back.
        plan.infotext[f"ControlNet {index}"] = (
            f"Module: {control.type}, Model: {control.model or 'default'}, Weight: {control.weight:g}, "
            f"Guidance Start: {control.start:g}, Guidance End: {control.end:g}, Map: {stored.id}"
        )
    return plan


def record_controlnets(controlnets: list[dict[str, Any]], parameters: list[dict[str, Any]], infotext: dict[str, Any]) -> None:
    """Name in the result and the infotext the ControlNet each entry ran with (and a union's control mode)."""
    for index, (used, entry) in enumerate(zip(controlnets, parameters, strict=True)):
        entry.update(used)
        field_name = f"ControlNet {index}"
        model = used["controlnet"] + (f", Union Mode: {used['control_mode']}" if used["control_mode"] is not None else "")
        if field_name in infotext:
            head, _, rest = infotext[field_name].partition(", Weight: ")
            infotext[field_name] = f"{head.split(', Model: ')[0]}, Model: {model}, Weight: {rest}"


def split_for_hires(relay: "ProgressRelay", job: "ResolvedJob", hires: HiresRequest, first_steps: int) -> tuple[float, float, str]:
    """Give the first pass its part of the run's progress and return (offset, share, prefix) for the hires pass.

    A bare run's bar becomes both passes' steps (the first pass's stay 1..N); a share (a sweep cell, a refine
    round) is divided in proportion to the steps of each pass, so progress never goes back between them.
    """
    later = max(1, int((hires.steps or job.steps) * hires.denoise)) * len(job.request.seeds)
    offset, prefix = relay.offset, relay.prefix
    units = relay.share if relay.share is not None else float(first_steps + later)
    if relay.grand_total is None:
        relay.grand_total = offset + units
    cut = units * first_steps / (first_steps + later)
    relay.segment(offset, cut, prefix)
    return offset + cut, units - cut, prefix


async def apply_hires(
    ctx: "RunContext", hires: HiresRequest, job: "ResolvedJob", images: list[Image.Image], relay: "ProgressRelay"
) -> tuple[list[Image.Image], dict[str, Any], list[str]]:
    """Each first-pass image enlarged (upscaler or Lanczos) and repainted by img2img at the large size, as one tile.

    The relay's segment is the hires pass's part of the bar (`split_for_hires`); each image fills an equal part.
    """
    from ..engine.upscale import DetailPass, resolve_upscaler, upscale_on_engine

    request = job.request
    width = round(job.width * hires.scale / 8) * 8
    height = round(job.height * hires.scale / 8) * 8
    if width * height > ctx.settings.max_pixels:
        raise RunInputError(
            f"hires.scale: {job.width}x{job.height} x {hires.scale:g} = {width}x{height} exceeds IMGTOOLS_MAX_PIXELS="
            f"{ctx.settings.max_pixels}; use a smaller scale or base size"
        )
    source = None
    if hires.upscaler is not None:
        spec = hires.upscaler
        source = await anyio.to_thread.run_sync(
            lambda: resolve_upscaler(spec, dirs=ctx.settings.upscaler_dirs, offline=ctx.engine.offline, param="hires.upscaler")
        )
    steps = hires.steps or job.steps
    if int(steps * hires.denoise) < 1:
        raise RunInputError(f"hires.denoise: {hires.denoise:g} x {steps} steps leaves no denoising step; raise denoise or hires.steps")
    finished: list[Image.Image] = []
    notes: list[str] = []
    info: dict[str, Any] = {}
    scale = 4 if hires.scale > 2 else 2
    band_offset, prefix = relay.offset, relay.prefix
    each = (relay.share if relay.share is not None else float(steps * len(images))) / len(images)
    for index, (image, seed) in enumerate(zip(images, request.seeds, strict=True)):
        relay.segment(band_offset + index * each, each, f"{prefix}hires: image {index + 1} / {len(images)}, ")
        relay.expected_steps = max(1, int(steps * hires.denoise))
        relay.note(f"enlarging to {width}x{height}")
        if source is not None:
            enlarged_run = await upscale_on_engine(ctx.engine, image, scale, upscaler=source, tile=256, overlap=16, ticket=ctx.ticket)
            enlarged = enlarged_run.image
            notes += enlarged_run.notes
        else:
            enlarged = image.resize((image.width * scale, image.height * scale), Image.Resampling.LANCZOS)
        # The upscaler works in whole factors; the exact hires size is a resize of its output, as in A1111.
        target = enlarged.resize((width, height), Image.Resampling.LANCZOS)
        detail = DetailPass(
            denoise=hires.denoise,
            prompt=request.prompt,
            negative_prompt=request.negative_prompt,
            seed=seed,
            model=request.model,
            steps=steps,
            guidance_scale=job.guidance_scale,
            sampler=request.sampler,
            tile=max(width, height),  # one img2img over the whole enlarged image, not tiles
            overlap=0,
        )
        painted = await upscale_on_engine(
            ctx.engine, target, 1, upscaler=None, tile=256, overlap=0, detail=detail, on_step=relay.on_step, ticket=ctx.ticket
        )
        finished.append(painted.image)
        info = painted.detail or {}
    used = {
        "scale": hires.scale,
        "denoise": hires.denoise,
        "steps": steps,
        "upscaler": hires.upscaler or "Lanczos",
        "size": [width, height],
        "first_pass_size": [job.width, job.height],
        "steps_run": info.get("steps_run_per_tile"),
    }
    return finished, used, list(dict.fromkeys(notes))


def hires_infotext(used: dict[str, Any]) -> dict[str, Any]:
    """A1111's hires fix fields; `Size` stays the first pass's, as A1111 writes it."""
    return {
        "Hires upscale": f"{used['scale']:g}",
        "Hires steps": used["steps"],
        "Hires upscaler": used["upscaler"],
        "Hires denoising strength": f"{used['denoise']:g}",
    }


async def mask_from_prompt(ctx: "RunContext", image: Image.Image, description: str) -> tuple[Image.Image, dict[str, Any]]:
    """The VLM's boxes for `description` as a mask of `image` (saved as an output), cut to silhouettes where a
    segmenter is in use (IMGTOOLS_SEGMENTER); nothing found is an error."""
    from ..images.segment import Segmenter, SegmenterError
    from ..vlm.grounding import NothingFound, mask_for

    if ctx.vlm is None or not ctx.vlm.configured:
        raise RunInputError(
            "mask_prompt: needs a vision-language model; set OPENROUTER_API_KEY or IMGTOOLS_VLM_API_KEY, or point "
            "IMGTOOLS_VLM_BASE_URL at a local OpenAI-compatible server (or give mask_shapes or a mask)"
        )
    result = await ctx.vlm.ground(image, description)
    try:
        mask = mask_for(image.size, result, description)
    except NothingFound as exc:
        raise RunInputError(str(exc)) from exc
    segmenter = ctx.segmenter or Segmenter.from_settings(ctx.settings, offline=ctx.engine.offline)
    pixel_boxes = [found.pixel_box(image.size) for found in result.grounding.objects]
    try:
        cut = await anyio.to_thread.run_sync(lambda: segmenter.silhouettes(image, pixel_boxes))
    except SegmenterError as exc:
        raise RunInputError(str(exc)) from exc
    if cut is None:
        method, why = "boxes", segmenter.unused_reason()
    else:
        mask, method = cut.mask, f"segmenter:{cut.model}"
        why = f"{cut.kept_as_boxes} box(es) where the segmenter found nothing kept whole" if cut.kept_as_boxes else None
    boxes = [found.model_dump() for found in result.grounding.objects]
    metadata = {
        "tool": "mask_prompt", "mask_prompt": description, "boxes": boxes, "vlm_model": result.model, "mask_method": method,
    }
    stored = await anyio.to_thread.run_sync(lambda: ctx.store.save(mask.convert("RGB"), f"mask: {description}", metadata))
    recorded = {
        "source": "mask_prompt",
        "mask_prompt": description,
        "boxes": boxes,
        "mask_id": stored.id,
        "mask_uri": stored.uri,
        "vlm": {"model": result.model, **result.usage.model_dump()},
        "method": method,  # "boxes", or "segmenter:<model>" when SAM cut each box to its silhouette
        "method_note": why,
    }
    return mask, recorded


def made_outputs(store: Any, parameters: dict[str, Any]) -> list[tuple[Any, str]]:
    """The outputs a run made besides its images (control maps, the mask from mask_prompt), as (StoredImage, label),
    so the tool's answer links them for the assistant to look at."""
    from ..store import StoredImage

    wanted = [(c["map"], f"control map {i}: {c['type']}") for i, c in enumerate(parameters.get("control") or []) if c.get("map")]
    if parameters.get("mask_made"):
        wanted.append((parameters["mask_made"], "mask made from mask_prompt"))
    found = []
    for image_id, label in wanted:
        path = store.lookup(image_id)
        if path is None:
            continue
        with Image.open(path) as image:
            found.append((StoredImage(image_id, path, image.width, image.height), label))
    return found
