"""The engine: device/dtype/plan choices, loaded pipelines, and one denoising job at a time per device."""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from contextvars import ContextVar
from functools import partial
from typing import Any, TypeVar

import anyio
import torch

from ..config import Settings
from .backends import Backends, RequestShape
from .cache import LoadedModel, PipelineCache, default_budget, weights_bytes
from .catalog import find_config_folder
from .choice import Choice, choose_dtype
from .device import DeviceFacts, probe
from .errors import EngineBusyError, EngineError, GenerationCancelled, OutOfMemoryError, PipelineError
from .families import FamilyInfo
from .job import GenerationJob, LoraWeight, RunOutput, StepCallback
from .loader import ModelSource, hf_cache_dir, inspect_family, load_pipeline, resolve_model
from .lora import AdapterSet, LoraLoadError, LoraSource, check_fits, download_lora, resolve_lora
from .memory import MemoryPlan, apply_memory_plan, choose_memory_plan, escalate, estimate_activation_bytes, footprint_of, reset_memory_plan
from .samplers import make_scheduler, sampler_label
from .weights import HeaderError, estimate_footprint

log = logging.getLogger(__name__)
T = TypeVar("T")

_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


class QueueTicket:
    """A place in the engine's queue, taken when a background job is accepted; the job's body runs inside it.

    Until the job reaches the device it counts as waiting, exactly like a foreground request, so
    accepting jobs can never overfill the queue; once accepted, the job's later runs (sweep cells,
    refine rounds) are not refused as busy halfway through.
    """

    def __init__(self, engine: "Engine") -> None:
        self.engine = engine
        self.counted = True
        self._token: Any = None

    def __enter__(self) -> "QueueTicket":
        self._token = _ADMITTED.set(self)
        return self

    def __exit__(self, *exc_info: object) -> None:
        _ADMITTED.reset(self._token)
        self.release()

    def release(self) -> None:
        """Give the place back if the job never reached the device (failed early, cancelled, never started)."""
        if self.counted:
            self.counted = False
            self.engine._waiting -= 1


_ADMITTED: ContextVar[QueueTicket | None] = ContextVar("imgtools_admitted", default=None)


class Engine:
    """Owns the device and the loaded pipelines; built once in the server lifespan."""

    def __init__(self, settings: Settings, facts: DeviceFacts | None = None) -> None:
        self.settings = settings
        self.facts = facts or probe(settings.device)
        self.dtype_choice = choose_dtype(self.facts, settings.dtype)
        self.dtype = _DTYPES[self.dtype_choice.value]
        self.device = self.facts.torch_device
        self.backends = Backends(settings, self.facts)  # refuses an explicit backend that cannot run here
        if settings.model_cache_bytes is not None:
            self.budget = Choice(settings.model_cache_bytes, "IMGTOOLS_MODEL_CACHE_BYTES")
        else:
            self.budget = default_budget(self.facts)
        self.cache = PipelineCache(budget_bytes=self.budget.value)
        self._lock = anyio.Lock()
        self._waiting = 0
        self._running: str | None = None
        self._running_since = 0.0
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

    @property
    def offline(self) -> bool:
        return self.settings.hf_offline or os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes")

    def resolve_loras(self, loras: list[LoraWeight], family: FamilyInfo, model_name: str) -> list[tuple[LoraSource, float]]:
        """Find each requested LoRA and check it fits the model's family; files only, nothing is loaded or downloaded.

        Not remembered between calls: a LoRA folder is re-read each time, so files added later are found.
        """
        wanted: list[tuple[LoraSource, float]] = []
        seen: set[str] = set()
        for lora in loras:
            source = resolve_lora(lora.name, lora_dirs=self.settings.lora_dirs, hub_cache=hf_cache_dir(), offline=self.offline)
            if source.key in seen:
                raise LoraLoadError(f"loras: {lora.name!r} is listed twice; give each LoRA once with the weight you want")
            seen.add(source.key)
            check_fits(source, family, model_name)
            wanted.append((source, lora.weight))
        return wanted

    # ----- queue -----

    @property
    def queue_length(self) -> int:
        return self._waiting

    @property
    def busy(self) -> bool:
        return self._running is not None

    def _refuse_if_full(self) -> None:
        if self._waiting >= self.settings.max_queue and self._lock.locked():
            raise EngineBusyError(
                f"engine busy: {self._waiting} request(s) already waiting (IMGTOOLS_MAX_QUEUE={self.settings.max_queue}); retry later"
            )

    def admit(self) -> QueueTicket:
        """Take a place in the queue now for work that will run later (a background job), or raise EngineBusyError."""
        self._refuse_if_full()
        self._waiting += 1
        return QueueTicket(self)

    async def _run_exclusive(self, label: str, fn: Callable[[threading.Event], T]) -> tuple[T, float]:
        """Wait in the FIFO for the device, then run `fn` in a worker thread; returns (result, seconds waited).

        A cancelled caller sets the event `fn` polls at each step, and the device is released only
        once the thread has really stopped, so the next job never overlaps a dying one. A caller
        cancelled while waiting leaves the queue at once.
        """
        ticket = _ADMITTED.get()
        if ticket is None or ticket.engine is not self:
            self._refuse_if_full()
        queued_at = time.perf_counter()
        if ticket is not None and ticket.engine is self and ticket.counted:
            ticket.counted = False  # the ticket's place in the count becomes this wait's
        else:
            self._waiting += 1
        try:
            await self._lock.acquire()
        finally:
            self._waiting -= 1
        try:
            waited = time.perf_counter() - queued_at
            self._running = label
            self._running_since = time.monotonic()
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

    def _estimate_bytes(self, source: ModelSource) -> int:
        """The model's weights once loaded, from its files' headers; 0 when they cannot be read."""
        assert source.path is not None
        try:
            return estimate_footprint(source.kind, source.path, self.dtype.itemsize).total_bytes
        except (HeaderError, OSError) as exc:
            log.warning("cannot estimate the size of %s before loading (%s); making room after", source.spec, exc)
            return 0

    def _load(self, source: ModelSource, family: FamilyInfo) -> LoadedModel:
        started = time.perf_counter()
        # Evict before loading, so the old and the new weights are never in memory together.
        self.cache.make_room(self._estimate_bytes(source))
        config = None
        if source.kind == "file":
            assert source.path is not None
            config = find_config_folder(source.path, family, self.settings.model_dirs, hf_cache_dir())
        pipe = load_pipeline(source, family, self.dtype, config=config, offline=self.offline)
        for done in self.backends.torch.setup_pipeline(
            pipe, family.family.value, self.dtype_choice.value, compile_unet=self.settings.torch_compile
        ):
            log.info("%s: %s", source.name, done)
        backend = self.backends.choose(family.family.value)
        size = weights_bytes(pipe)
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
            plan_reason=plan.reason,
            adapters=AdapterSet(self.dtype.itemsize),
            backend=backend.value,
            backend_reason=backend.reason,
        )
        self.cache.put(source.key, model)
        self.cache.make_room(0, keep=source.key)  # in case it measured larger than estimated
        return model

    def _choose_plan(self, family: FamilyInfo, footprint: Any, width: int, height: int, batch: int):
        activations = estimate_activation_bytes(family.family.value, width, height, batch, self.dtype.itemsize)
        # Free memory changes as models come and go, so it is measured again for every load.
        current = probe(self.facts.torch_device)
        return choose_memory_plan(current, footprint, activations, requested=self.settings.memory)

    def _get_loaded(self, source: ModelSource, family: FamilyInfo) -> tuple[LoadedModel, float]:
        cached = self.cache.get(source.key)
        if cached is not None:
            return cached, 0.0
        model = self._load(source, family)
        return model, model.load_seconds

    # ----- generation -----

    async def generate(self, job: GenerationJob, on_step: StepCallback | None = None) -> RunOutput:
        source, family = self.resolve(job.model)
        try:
            result, waited = await self._run_exclusive(
                f"{job.mode}:{source.name}", partial(self._generate_sync, source, family, job, on_step)
            )
        except EngineError:
            raise
        except Exception as exc:  # a failing pipeline fails this request only; the engine and the queue go on
            raise self._pipeline_failure(exc) from exc
        result.timings["queue_s"] = round(waited, 4)
        return result

    def _pipeline_failure(self, exc: Exception) -> EngineError:
        if isinstance(exc, torch.OutOfMemoryError) or "can't allocate memory" in str(exc):
            return OutOfMemoryError(f"out of memory on {self.device}; lower width/height or num_images")
        log.error("generation failed inside the pipeline", exc_info=exc)
        detail = (str(exc).strip().splitlines() or [""])[0][:300]
        return PipelineError(
            f"model: generation failed inside the pipeline ({type(exc).__name__}: {detail}); "
            "the model may be broken or not support these parameters"
        )

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
        applied = self._apply_loras(model, source, family, job.loras)
        warnings: list[str] = []
        # The model's backend computes what it can of this request; torch the rest (e.g. with LoRAs active).
        with self.backends.running(model, model.pipeline(job.mode), self._request_shape(model, job)) as backend_run:
            try:
                images, label, steps_run = self._denoise(model, job, on_step, cancel)
            except torch.OutOfMemoryError:
                next_plan = escalate(MemoryPlan(model.plan), device_kind=self.facts.kind)
                if next_plan is None:
                    raise OutOfMemoryError(
                        f"out of memory on {self.device} even with the {model.plan} plan; lower width/height or num_images"
                    ) from None
                warnings.append(f"out of memory with the {model.plan} plan; retried with {next_plan.value}")
                log.warning(warnings[-1])
                self._switch_plan(model, next_plan)
                images, label, steps_run = self._denoise(model, job, on_step, cancel)
        if backend_run.prepare_seconds:
            self.cache.make_room(0, keep=source.key)  # compiled graphs count against the budget too
        denoise_s = time.perf_counter() - started - load_s
        return RunOutput(
            images=images,
            seeds=list(job.seeds),
            model=model.describe(),
            sampler_label=label,
            steps_run=steps_run,
            timings={
                "load_s": round(load_s, 4),
                "generate_s": round(denoise_s, 4),
                "backend_prepare_s": round(backend_run.prepare_seconds, 4),
            },
            engine={**self.describe_choices(model), **backend_run.as_dict()},
            warnings=warnings,
            loras=applied,
        )

    def _request_shape(self, model: LoadedModel, job: GenerationJob) -> RequestShape:
        unet_config = getattr(getattr(model.base, "unet", None), "config", None)
        # Pipelines skip classifier-free guidance at guidance <= 1 and for guidance-distilled (LCM) UNets.
        guided = job.guidance_scale > 1 and getattr(unet_config, "time_cond_proj_dim", None) is None
        loras_active = bool(model.adapters is not None and model.adapters.active)
        return RequestShape(job.mode, job.width, job.height, len(job.seeds), guided, loras_active)

    def _apply_loras(
        self, model: LoadedModel, source: ModelSource, family: FamilyInfo, loras: list[LoraWeight]
    ) -> list[dict[str, Any]]:
        """Activate exactly the requested adapters (loading each once); a request without LoRAs runs without any."""
        if model.adapters is None:
            return []
        wanted = self.resolve_loras(loras, family, source.name)
        wanted = [(download_lora(s, hub_cache=hf_cache_dir()), w) if s.path is None else (s, w) for s, w in wanted]
        applied = model.adapters.apply(model.base, wanted, source.name)
        if any(weight for _, weight in wanted):
            self.cache.make_room(0, keep=source.key)  # new adapters count against the budget too
        return [lora.as_dict() for lora in applied]

    def _switch_plan(self, model: LoadedModel, plan: MemoryPlan) -> None:
        # Weights that offload hooks moved during inference are inference tensors; undoing and redoing
        # the hooks outside inference mode would try to make them trainable parameters again and fail.
        with torch.inference_mode():
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
        }
        if model is not None:
            info["backend"] = model.backend
            info["backend_reason"] = model.backend_reason
        else:
            family = self._default_family()
            choice = self.backends.choose(family or "sd1")
            info["backend"] = choice.value
            info["backend_reason"] = choice.reason if family else f"for SD-family models: {choice.reason}"
        if model is not None:
            info["memory_plan"] = model.plan
            info["memory_plan_reason"] = model.plan_reason
            vae = getattr(model.base, "vae", None)
            if isinstance(vae, torch.nn.Module):
                info["vae_dtype"] = str(vae.dtype).removeprefix("torch.")  # differs where fp16 would overflow
        return info

    def planned_memory(self, spec: str | None = None) -> dict[str, Any] | None:
        """The plan a model would get, from its files' sizes, without loading it (None if it is not local)."""
        spec = spec or self.settings.model
        try:
            source, family = self._sources.get(spec) or self._local_source(spec)
            assert source.path is not None
            footprint = estimate_footprint(source.kind, source.path, self.dtype.itemsize)
            choice = self._choose_plan(family, footprint, family.native_size, family.native_size, 1)
        except (EngineError, HeaderError, OSError, ValueError) as exc:
            log.debug("no plan estimate for %s: %s", spec, exc)
            return None
        return {
            "model": spec,
            "memory_plan": choice.value.value,
            "reason": choice.reason,
            "estimated_weights_bytes": footprint.total_bytes,
            "at_size": f"{family.native_size}x{family.native_size}",
        }

    def _default_family(self) -> str | None:
        """The default model's family when it is known or local (configs only, nothing downloaded); else None."""
        spec = self.settings.model
        try:
            _, family = self._sources.get(spec) or self._local_source(spec)
        except (EngineError, OSError, ValueError) as exc:
            log.debug("default model %s not local (%s); backend shown for SD-family models", spec, exc)
            return None
        return family.family.value

    def _local_source(self, spec: str) -> tuple[ModelSource, FamilyInfo]:
        source = resolve_model(spec, model_dirs=self.settings.model_dirs, offline=True)
        return source, inspect_family(source)

    def status(self) -> dict[str, Any]:
        """What engine_status shows; reads state only, safe to call while a job runs."""
        try:
            facts = probe(self.settings.device)  # free memory now, not at start-up
        except (ValueError, RuntimeError) as exc:
            log.debug("re-probing %s failed (%s); showing start-up facts", self.settings.device, exc)
            facts = self.facts
        loaded = []
        for model in self.cache.loaded():
            loaded.append(
                {
                    **model.describe(),
                    "memory_plan_reason": model.plan_reason,
                    "memory_bytes": model.memory_bytes,
                    "idle_s": round(time.monotonic() - model.last_used, 1),
                    **model.lora_status(),
                }
            )
        return {
            **self.describe_choices(),
            "device_total_bytes": facts.total_memory_bytes,
            "device_free_bytes": facts.free_memory_bytes,
            "memory_setting": self.settings.memory,
            "default_model_plan": None if loaded else self.planned_memory(),
            "cache_budget_bytes": self.cache.budget_bytes,
            "cache_budget_reason": self.budget.reason,
            "cache_used_bytes": self.cache.used_bytes(),
            "evictions": [e.as_dict() for e in self.cache.evictions],
            "loaded_models": loaded,
            "queue_length": self._waiting,
            "running": self._running,
            "running_s": round(time.monotonic() - self._running_since, 1) if self._running else None,
            "max_queue": self.settings.max_queue,
            "backends": self.backends.status(),
        }

    async def aclose(self) -> None:
        for model in self.cache.loaded():
            self.cache.evict(model.source.key, reason="engine closed")
