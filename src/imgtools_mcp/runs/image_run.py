"""The shared path of every image-making run: check the request once, run it on the engine, save, report.

generate, edit and inpaint are this path with different ImageInputs; a sweep cell and a refine round too.
The model is resolved once per request (`model_family`, for what the inputs need of its family), the
engine checks the whole request once (`engine.acheck` → ResolvedJob) and `engine.generate` runs that as is.
Each of the three reports its slow first-use work (download, load, conversion) to the run's progress relay.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import anyio
from PIL import Image

from .. import __version__
from ..engine.families import FamilyInfo
from ..engine.request import EngineRequest, LoraWeight, ProgressCallback, ResolvedJob, RunOutput
from ..infotext import format_infotext, lora_tag
from ..params import MAX_SEED, EditRequest, GenerationParams, GenerationResult, ImageInfo
from ..store import StoredImage
from .context import RunContext
from .inputs import ImageInputs
from .progress import ProgressRelay

Prepare = Callable[[RunContext, Any, FamilyInfo], Awaitable[ImageInputs]]
"""A tool's input preparation: (context, its request, the model's family) -> what it adds to the parameters."""


@dataclass
class ImagePlan:
    """A request the engine has checked, with every default filled: what runs and what is reported."""

    job: ResolvedJob
    used: dict[str, Any]
    notes: list[str]


@dataclass
class ImageRun:
    """What a run made: the saved images, the pixels (for thumbnails and grids) and the typed result."""

    stored: list[StoredImage]
    images: list[Image.Image]
    result: GenerationResult


async def model_family(ctx: RunContext, spec: str | None, on_progress: ProgressCallback | None = None) -> FamilyInfo:
    """The model's family, for what the inputs depend on; off the event loop (a first use may scan or download,
    which `on_progress` hears).

    The engine remembers what it resolved, so its check of the whole request finds the model again for free.
    """
    _, family = await ctx.engine.aresolve(spec, on_progress)
    return family


def planned_steps(job: ResolvedJob) -> int:
    """The denoising steps the job's pipeline call runs: an img2img or inpaint call runs steps x strength of them."""
    if job.strength is not None and job.mode in ("img2img", "inpaint"):
        return max(1, int(job.steps * job.strength))
    return job.steps


def pick_seed(seed: int | None) -> int:
    return seed if seed is not None and seed >= 0 else secrets.randbelow(MAX_SEED + 1 - 8)


def engine_request(ctx: RunContext, params: GenerationParams, inputs: ImageInputs) -> EngineRequest:
    default_w, default_h = inputs.default_size or (None, None)
    seed = pick_seed(params.seed)
    return EngineRequest(
        mode=inputs.mode,
        model=params.model or ctx.settings.model,
        prompt=params.prompt,
        negative_prompt=params.negative_prompt,
        width=params.width or default_w,
        height=params.height or default_h,
        steps=params.steps,
        guidance_scale=params.guidance_scale,
        sampler=params.sampler,
        seeds=[(seed + i) % (MAX_SEED + 1) for i in range(params.num_images)],
        strength=inputs.strength,
        image=inputs.image,
        mask=inputs.mask,
        reference_images=list(inputs.reference_images),
        loras=[LoraWeight(l.name, l.weight) for l in params.loras],
        # `speed` reaches the engine only when it asks for a step cache, so plain requests stay as they were.
        extra={**inputs.extra, **({"speed": params.speed} if params.speed != "quality" else {})},
    )


async def check(
    ctx: RunContext, params: GenerationParams, inputs: ImageInputs, on_progress: ProgressCallback | None = None
) -> ImagePlan:
    """The engine fills every default from the model's family and checks sizes, strength and LoRAs, once."""
    if params.control and "control" not in inputs.extra:
        from .structure import prepare_controls  # ControlNet maps are made (and saved) once per request

        controls = await prepare_controls(ctx, params.control)
        inputs.extra["control"] = controls.inputs
        inputs.infotext.update(controls.infotext)
        inputs.parameters["control"] = controls.parameters
    inputs.hires = getattr(params, "hires", None)
    job = await ctx.engine.acheck(engine_request(ctx, params, inputs), on_progress)
    if job.controlnets and "control" in inputs.parameters:
        from .structure import record_controlnets

        record_controlnets(job.controlnets, inputs.parameters["control"], inputs.infotext)
    return ImagePlan(job, {**job.used(), **inputs.parameters}, [*inputs.notes, *job.notes])


def _infotext(job: ResolvedJob, run: RunOutput, seed: int, inputs: ImageInputs) -> str:
    # A1111's `<lora:name:weight>` tags in the prompt are how A1111/SD.Next read LoRAs back.
    tags = [lora_tag(lora.name, lora.weight) for lora in run.loras if lora.weight]
    lora_hashes = ", ".join(f"{l.name}: {l.hash}" for l in run.loras if l.weight and l.hash) or None
    # Forge's names where guidance is not classifier-free guidance (FLUX.1's distilled guidance).
    guidance_field = {"distilled": "Distilled CFG Scale", "true_cfg": "True CFG scale"}.get(
        job.family.family.guidance_knob, "CFG scale"
    )
    fields = {
        "Steps": job.steps,
        "Sampler": run.sampler_label,
        guidance_field: job.guidance_scale,
        "Seed": seed,
        "Size": f"{job.width}x{job.height}",
        "Model": run.model.name,
        "Family": job.family.family.id,
        "Denoising strength": job.strength if job.mode != "instruct" else None,
        "Lora hashes": lora_hashes,
        "Step cache": _step_cache_field(run.engine.step_cache),
        **inputs.infotext,
        "Version": f"imgtools-mcp {__version__}",
    }
    return format_infotext(" ".join([job.request.prompt, *tags]), job.request.negative_prompt, fields)


def _step_cache_field(cache: dict[str, Any] | None) -> str | None:
    if not cache:
        return None
    if cache["method"] == "none":
        return f"{cache['speed']} (not applied)"
    setting = f"{cache['threshold']:g}" if "threshold" in cache else f"interval {cache['interval']}"
    return f"{cache['speed']}, {cache['method']} {setting}, {cache['computed']}/{cache['denoiser_passes']} computed"


async def run_and_save(ctx: RunContext, tool: str, plan: ImagePlan, inputs: ImageInputs, relay: ProgressRelay) -> ImageRun:
    """Denoise the checked request and save every image with its infotext and sidecar."""
    started = time.perf_counter()
    steps = planned_steps(plan.job)
    hires_band = None
    if inputs.hires is not None:
        from .structure import split_for_hires  # one bar over both passes: the first pass's steps, then the hires pass's

        hires_band = split_for_hires(relay, plan.job, inputs.hires, steps)
    relay.expected_steps = steps
    if relay.share is None:
        relay.expected_total = relay.offset + steps
    # Loading, LoRA downloads and backend conversion report below the first step, on the same bar.
    run = await ctx.engine.generate(plan.job, relay.on_step, ticket=ctx.ticket, on_progress=relay.on_progress)
    model, engine = run.model.as_dict(), run.engine.as_dict()
    loras = [lora.as_dict() for lora in run.loras]
    saved_at = time.perf_counter()
    images = [inputs.postprocess(img) if inputs.postprocess else img for img in run.images]
    if inputs.hires is not None:
        from .structure import apply_hires, hires_infotext  # A1111's hires fix: enlarge, then img2img at that size

        assert hires_band is not None
        relay.segment(*hires_band)
        images, hires_used, hires_notes = await apply_hires(ctx, inputs.hires, plan.job, images, relay)
        plan.used["hires"] = hires_used
        inputs.infotext.update(hires_infotext(hires_used))
        plan.notes.extend(hires_notes)

    def save_all() -> list[StoredImage]:
        stored = []
        for image, seed in zip(images, run.seeds, strict=True):
            metadata = {
                "tool": tool,
                "seed": seed,
                "parameters": {**plan.used, "seed": seed},
                "model": model,
                "engine": engine,
                "loras": loras,
                **inputs.metadata,
            }
            stored.append(ctx.store.save(image, _infotext(plan.job, run, seed, inputs), metadata))
        return stored

    stored = await anyio.to_thread.run_sync(save_all)
    timings = {**run.timings, "save_s": round(time.perf_counter() - saved_at, 4), "total_s": round(time.perf_counter() - started, 4)}
    result = GenerationResult(
        images=[ImageInfo.of(s, seed) for s, seed in zip(stored, run.seeds, strict=True)],
        parameters=plan.used,
        model={**model, "loras": loras} if loras else model,
        engine=engine,
        timings=timings,
        warnings=[*plan.notes, *run.warnings],
    )
    return ImageRun(stored, images, result)


async def run_image(ctx: RunContext, tool: str, request: GenerationParams, prepare: Prepare) -> ImageRun:
    """The whole run of one image tool: resolve the model once, prepare the inputs, check, denoise, save."""
    if isinstance(request, EditRequest) and request.model is None and ctx.settings.edit_model:
        request = request.model_copy(update={"model": ctx.settings.edit_model})  # IMGTOOLS_EDIT_MODEL
    relay = ProgressRelay(ctx.sink)
    async with relay.running():  # from the start: a first use downloads while resolving, loads and converts later
        inputs = await prepare(ctx, request, await model_family(ctx, request.model, relay.on_progress))
        plan = await check(ctx, request, inputs, relay.on_progress)
        return await run_and_save(ctx, tool, plan, inputs, relay)


def summary_line(tool: str, result: GenerationResult) -> str:
    ids = ", ".join(i.id for i in result.images)
    seeds = ", ".join(str(i.seed) for i in result.images)
    first = result.images[0]
    text = (
        f"{tool}: {len(result.images)} image(s) {first.width}x{first.height} [{ids}] seed(s) {seeds}; "
        f"{result.parameters['steps']} steps, {result.model.get('name')} on {result.engine.get('device')}, "
        f"{result.timings.get('total_s', 0):.1f} s"
    )
    if result.warnings:
        text += " — " + "; ".join(result.warnings)
    return text
