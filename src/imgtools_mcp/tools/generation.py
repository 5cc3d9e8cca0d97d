"""The shared path of every image-making tool: defaults, input checks, the engine call, saving, the result."""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import anyio
from mcp.server.mcpserver import Context
from mcp.server.mcpserver.exceptions import ToolError
from mcp_types import CallToolResult
from PIL import Image

from .. import __version__
from ..app import AppContext
from ..engine.cache import Mode
from ..engine.families import FamilyInfo
from ..engine.queue import QueueTicket
from ..engine.request import EngineRequest, LoraWeight, ResolvedJob, RunOutput
from ..jobs import ProgressSink
from ..params import MAX_SEED, GenerationParams, GenerationResult, ImageInfo
from ..store import StoredImage
from .common import StepRelay, call_result_to_dict, image_blocks, progress_sink, result_of


@dataclass
class ImageInputs:
    """What a tool adds to the shared parameters: its mode, input images, and what to record about them."""

    mode: Mode = "txt2img"
    image: Image.Image | None = None
    mask: Image.Image | None = None
    strength: float | None = None
    default_size: tuple[int, int] | None = None
    infotext: dict[str, Any] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)
    postprocess: Callable[[Image.Image], Image.Image] | None = None
    notes: list[str] = field(default_factory=list)
    parameters: dict[str, Any] = field(default_factory=dict)  # tool-specific entries of the reported `parameters`


@dataclass
class PlannedJob:
    job: ResolvedJob
    family: FamilyInfo
    used: dict[str, Any]


@dataclass
class Produced:
    stored: list[StoredImage]
    images: list[Image.Image]
    result: GenerationResult


def plan_job(app: AppContext, params: GenerationParams, inputs: ImageInputs) -> PlannedJob:
    """Choose the seeds and let the engine fill every default from the model's family and check its limits."""
    default_w, default_h = inputs.default_size or (None, None)
    seed = params.seed if params.seed is not None and params.seed >= 0 else secrets.randbelow(MAX_SEED + 1 - 8)
    seeds = [(seed + i) % (MAX_SEED + 1) for i in range(params.num_images)]
    request = EngineRequest(
        mode=inputs.mode,
        model=params.model or app.settings.model,
        prompt=params.prompt,
        negative_prompt=params.negative_prompt,
        width=params.width or default_w,
        height=params.height or default_h,
        steps=params.steps,
        guidance_scale=params.guidance_scale,
        sampler=params.sampler,
        seeds=seeds,
        strength=inputs.strength,
        image=inputs.image,
        mask=inputs.mask,
        loras=[LoraWeight(l.name, l.weight) for l in params.loras],
    )
    job = app.engine.check(request)
    used = {**job.used(), "loras": [l.model_dump() for l in params.loras], **inputs.parameters}
    return PlannedJob(job, job.family, used)


def _infotext_prompt(job: ResolvedJob, run: RunOutput) -> str:
    """The prompt with A1111's `<lora:name:weight>` tags appended, which A1111/SD.Next read back into LoRAs."""
    from ..infotext import lora_tag

    tags = [lora_tag(lora.name, lora.weight) for lora in run.loras if lora.weight]
    return " ".join([job.request.prompt, *tags])


def _infotext_fields(planned: PlannedJob, run: RunOutput, seed: int, inputs: ImageInputs) -> dict[str, Any]:
    job = planned.job
    lora_hashes = ", ".join(f"{l.name}: {l.hash}" for l in run.loras if l.weight and l.hash) or None
    return {
        "Steps": job.steps,
        "Sampler": run.sampler_label,
        "CFG scale": job.guidance_scale,
        "Seed": seed,
        "Size": f"{job.width}x{job.height}",
        "Model": run.model.name,
        "Denoising strength": job.strength,
        "Lora hashes": lora_hashes,
        **inputs.infotext,
        "Version": f"imgtools-mcp {__version__}",
    }


async def run_and_save(
    app: AppContext, tool: str, planned: PlannedJob, inputs: ImageInputs, relay: StepRelay, ticket: QueueTicket | None = None
) -> Produced:
    from ..infotext import format_infotext

    started = time.perf_counter()
    ticket = ticket or getattr(relay.sink, "ticket", None)  # a background job's place in the queue (jobs.py)
    run = await app.engine.generate(planned.job, relay.on_step, ticket=ticket)
    model_info, engine_info = run.model.as_dict(), run.engine.as_dict()
    loras = [lora.as_dict() for lora in run.loras]
    saved_at = time.perf_counter()
    images = [inputs.postprocess(img) if inputs.postprocess else img for img in run.images]

    def save_all() -> list[StoredImage]:
        stored = []
        for image, seed in zip(images, run.seeds, strict=True):
            fields = _infotext_fields(planned, run, seed, inputs)
            infotext = format_infotext(_infotext_prompt(planned.job, run), planned.job.request.negative_prompt, fields)
            metadata = {
                "tool": tool,
                "seed": seed,
                "parameters": {**planned.used, "seed": seed},
                "model": model_info,
                "engine": engine_info,
                "loras": loras,
                **inputs.metadata,
            }
            stored.append(app.store.save(image, infotext, metadata))
        return stored

    stored = await anyio.to_thread.run_sync(save_all)
    timings = {**run.timings, "save_s": round(time.perf_counter() - saved_at, 4), "total_s": round(time.perf_counter() - started, 4)}
    result = GenerationResult(
        images=[
            ImageInfo(id=s.id, uri=s.uri, metadata_uri=s.metadata_uri, path=str(s.path), width=s.width, height=s.height, seed=seed)
            for s, seed in zip(stored, run.seeds, strict=True)
        ],
        parameters=planned.used,
        model={**model_info, "loras": loras} if loras else model_info,
        engine=engine_info,
        timings=timings,
        warnings=[*inputs.notes, *run.warnings],
    )
    return Produced(stored, images, result)


def summary_line(tool: str, produced: Produced) -> str:
    result = produced.result
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


async def produce_result(
    app: AppContext, tool: str, params: GenerationParams, inputs: ImageInputs, sink: ProgressSink | None
) -> CallToolResult:
    planned = plan_job(app, params, inputs)
    relay = StepRelay(sink)
    async with relay.running():
        produced = await run_and_save(app, tool, planned, inputs, relay)
    return result_of(summary_line(tool, produced), image_blocks(produced.stored, produced.images), produced.result)


async def run_image_tool(
    ctx: Context,
    tool: str,
    params: GenerationParams,
    prepare: Callable[[AppContext], Any],
) -> CallToolResult:
    """Run in the foreground with progress, or as a background job when `background` is set.

    `prepare(app)` is an async function returning the tool's ImageInputs (resolving image references
    happens there, before a job id is handed out, so bad references fail the call itself).
    """
    from .common import app_of

    app = app_of(ctx)
    await app.engine.aresolve(params.model)  # so plan_job's lookup never blocks the event loop
    inputs: ImageInputs = await prepare(app)
    if not params.background:
        return await produce_result(app, tool, params, inputs, progress_sink(ctx))
    plan_job(app, params, inputs)  # refuse bad requests now rather than inside the job

    async def body(sink: ProgressSink) -> dict[str, Any]:
        return call_result_to_dict(await produce_result(app, tool, params, inputs, sink))

    record = app.jobs.start(tool, body)
    ticket = GenerationResult(job_id=record.id)
    return result_of(f"{tool}: started job {record.id}; poll get_job for progress and the result", [], ticket)
