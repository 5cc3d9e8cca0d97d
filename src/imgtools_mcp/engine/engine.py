"""The engine: device/dtype/plan choices, loaded pipelines, and one denoising job at a time per device."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from functools import partial
from typing import Any, TypeVar

import anyio
import torch

from ..config import Settings
from .cache import LoadedModel, PipelineCache, weights_bytes
from .choice import choose_backend, choose_dtype
from .device import DeviceFacts, probe
from .errors import EngineBusyError, EngineError, GenerationCancelled, OutOfMemoryError
from .families import FamilyInfo
from .job import GenerationJob, RunOutput, StepCallback
from .loader import ModelSource, inspect_family, load_pipeline, resolve_model
from .memory import MemoryPlan, apply_memory_plan, choose_memory_plan, escalate, estimate_activation_bytes, footprint_of, reset_memory_plan
from .samplers import make_scheduler, sampler_label

log = logging.getLogger(__name__)
T = TypeVar("T")

_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


class Engine:
    """Owns the device and the loaded pipelines; built once in the server lifespan."""

    def __init__(self, settings: Settings, facts: DeviceFacts | None = None) -> None:
        self.settings = settings
        self.facts = facts or probe(settings.device)
        self.dtype_choice = choose_dtype(self.facts, settings.dtype)
        self.dtype = _DTYPES[self.dtype_choice.value]
        self.device = self.facts.torch_device
        self.cache = PipelineCache()
        self._lock = anyio.Lock()
        self._waiting = 0
        self._running: str | None = None
        self._sources: dict[str, tuple[ModelSource, FamilyInfo]] = {}

    # ----- model resolution (cheap: configs only) -----

    def resolve(self, spec: str | None) -> tuple[ModelSource, FamilyInfo]:
        """Find a model and its family without loading weights; results are remembered per spec."""
        spec = spec or self.settings.model
        if spec not in self._sources:
            source = resolve_model(spec, model_dirs=self.settings.model_dirs, offline=self.settings.hf_offline)
            self._sources[spec] = (source, inspect_family(source))
        return self._sources[spec]

    async def aresolve(self, spec: str | None) -> tuple[ModelSource, FamilyInfo]:
        """`resolve` off the event loop: a first use may scan folders or download from the hub."""
        return await anyio.to_thread.run_sync(self.resolve, spec)

    # ----- queue -----

    @property
    def queue_length(self) -> int:
        return self._waiting

    @property
    def busy(self) -> bool:
        return self._running is not None

    async def _run_exclusive(self, label: str, fn: Callable[[threading.Event], T]) -> tuple[T, float]:
        """Wait in the FIFO for the device, then run `fn` in a worker thread; returns (result, seconds waited).

        A cancelled caller sets the event `fn` polls at each step, and the device is released only
        once the thread has really stopped, so the next job never overlaps a dying one.
        """
        if self._waiting >= self.settings.max_queue and self._lock.locked():
            raise EngineBusyError(
                f"engine busy: {self._waiting} request(s) already waiting (IMGTOOLS_MAX_QUEUE={self.settings.max_queue}); retry later"
            )
        queued_at = time.perf_counter()
        self._waiting += 1
        try:
            await self._lock.acquire()
        finally:
            self._waiting -= 1
        try:
            waited = time.perf_counter() - queued_at
            self._running = label
            cancel = threading.Event()
            finished = threading.Event()

            def work() -> T:
                try:
                    return fn(cancel)
                finally:
                    finished.set()

            try:
                with anyio.fail_after(self.settings.request_timeout_s):
                    result = await anyio.to_thread.run_sync(work, abandon_on_cancel=True)
            except TimeoutError:
                cancel.set()
                with anyio.CancelScope(shield=True):
                    await anyio.to_thread.run_sync(finished.wait)
                raise EngineError(
                    f"generation timed out after {self.settings.request_timeout_s:g} s (IMGTOOLS_REQUEST_TIMEOUT_S)"
                ) from None
            except anyio.get_cancelled_exc_class():
                cancel.set()
                with anyio.CancelScope(shield=True):
                    await anyio.to_thread.run_sync(finished.wait)
                raise
            return result, waited
        finally:
            self._running = None
            self._lock.release()

    # ----- loading -----

    def _load(self, source: ModelSource, family: FamilyInfo) -> LoadedModel:
        started = time.perf_counter()
        pipe = load_pipeline(source, family, self.dtype)
        size = weights_bytes(pipe)
        self.cache.make_room(size)
        footprint = footprint_of(pipe)
        plan = self._choose_plan(family, footprint, family.native_size, family.native_size, 1)
        apply_memory_plan(pipe, plan.value, self.device)
        model = LoadedModel(
            source=source,
            family=family,
            base=pipe,
            scheduler_config=pipe.scheduler.config,
            device=self.device,
            dtype=self.dtype,
            plan=plan.value.value,
            weights_bytes=size,
            load_seconds=time.perf_counter() - started,
        )
        model.plan_reason = plan.reason  # type: ignore[attr-defined]
        self.cache.put(source.key, model)
        return model

    def _choose_plan(self, family: FamilyInfo, footprint: Any, width: int, height: int, batch: int):
        activations = estimate_activation_bytes(family.family.value, width, height, batch, self.dtype.itemsize)
        return choose_memory_plan(self.facts, footprint, activations, requested=self.settings.memory)

    def _get_loaded(self, source: ModelSource, family: FamilyInfo) -> tuple[LoadedModel, float]:
        cached = self.cache.get(source.key)
        if cached is not None:
            return cached, 0.0
        model = self._load(source, family)
        return model, model.load_seconds

    # ----- generation -----

    async def generate(self, job: GenerationJob, on_step: StepCallback | None = None) -> RunOutput:
        source, family = self.resolve(job.model)
        result, waited = await self._run_exclusive(
            f"{job.mode}:{source.name}", partial(self._generate_sync, source, family, job, on_step)
        )
        result.timings["queue_s"] = round(waited, 4)
        return result

    def _generate_sync(
        self,
        source: ModelSource,
        family: FamilyInfo,
        job: GenerationJob,
        on_step: StepCallback | None,
        cancel: threading.Event,
    ) -> RunOutput:
        started = time.perf_counter()
        model, load_s = self._get_loaded(source, family)
        warnings: list[str] = []
        try:
            images, label, steps_run = self._denoise(model, job, on_step, cancel)
        except torch.OutOfMemoryError:
            next_plan = escalate(MemoryPlan(model.plan))
            if next_plan is None:
                raise OutOfMemoryError(
                    f"out of memory on {self.device} even with the {model.plan} plan; lower width/height or num_images"
                ) from None
            warnings.append(f"out of memory with the {model.plan} plan; retried with {next_plan.value}")
            log.warning(warnings[-1])
            self._switch_plan(model, next_plan)
            images, label, steps_run = self._denoise(model, job, on_step, cancel)
        denoise_s = time.perf_counter() - started - load_s
        return RunOutput(
            images=images,
            seeds=list(job.seeds),
            model=model.describe(),
            sampler_label=label,
            steps_run=steps_run,
            timings={"load_s": round(load_s, 4), "generate_s": round(denoise_s, 4)},
            engine=self.describe_choices(model),
            warnings=warnings,
        )

    def _switch_plan(self, model: LoadedModel, plan: MemoryPlan) -> None:
        reset_memory_plan(model.base)
        if self.device.startswith("cuda"):
            torch.cuda.empty_cache()
        apply_memory_plan(model.base, plan, self.device)
        model.plan = plan.value

    def _denoise(
        self, model: LoadedModel, job: GenerationJob, on_step: StepCallback | None, cancel: threading.Event
    ) -> tuple[list[Any], str, int]:
        pipe = model.pipeline(job.mode)
        scheduler = make_scheduler(job.sampler, model.scheduler_config)
        if scheduler is None:
            scheduler = type(model.base.scheduler).from_config(model.scheduler_config)
        pipe.scheduler = scheduler
        label = sampler_label(job.sampler, type(scheduler).__name__)
        # CPU generators give the same noise on every device, so a seed means the same image everywhere.
        generators = [torch.Generator("cpu").manual_seed(seed) for seed in job.seeds]
        steps_done = 0

        def step_end(pipeline: Any, step: int, timestep: Any, callback_kwargs: dict[str, Any]) -> dict[str, Any]:
            nonlocal steps_done
            steps_done = step + 1
            if cancel.is_set():
                raise GenerationCancelled(steps_done)
            if on_step is not None:
                on_step(steps_done, pipeline.num_timesteps)
            return {}

        kwargs: dict[str, Any] = dict(
            prompt=job.prompt,
            negative_prompt=job.negative_prompt or None,
            num_inference_steps=job.steps,
            guidance_scale=job.guidance_scale,
            num_images_per_prompt=len(job.seeds),
            generator=generators,
            callback_on_step_end=step_end,
            output_type="pil",
        )
        if job.mode == "txt2img":
            kwargs.update(width=job.width, height=job.height)
        elif job.mode == "img2img":
            assert job.image is not None
            kwargs.update(image=job.image.resize((job.width, job.height)), strength=job.strength)
        else:
            assert job.image is not None and job.mask is not None
            kwargs.update(
                image=job.image, mask_image=job.mask, width=job.width, height=job.height, strength=job.strength
            )
        with torch.inference_mode():
            images = pipe(**kwargs).images
        return images, label, steps_done

    # ----- introspection -----

    def describe_choices(self, model: LoadedModel | None = None) -> dict[str, Any]:
        info: dict[str, Any] = {
            "device": self.device,
            "device_name": self.facts.name,
            "dtype": self.dtype_choice.value,
            "dtype_reason": self.dtype_choice.reason,
            "backend": "torch",
        }
        if model is not None:
            info["memory_plan"] = model.plan
            info["memory_plan_reason"] = getattr(model, "plan_reason", "")
        return info

    def status(self) -> dict[str, Any]:
        return {
            **self.describe_choices(),
            "loaded_models": [m.describe() for m in self.cache.loaded()],
            "queue_length": self._waiting,
            "running": self._running,
            "max_queue": self.settings.max_queue,
        }

    async def aclose(self) -> None:
        for model in self.cache.loaded():
            self.cache.evict(model.source.key)
