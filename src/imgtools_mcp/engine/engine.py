"""The engine: device/dtype/plan choices, loaded pipelines, and one denoising job at a time per device."""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable
from functools import partial
from typing import Any

import anyio
import torch

from ..config import Settings
from .backends import Backends, RequestShape
from .backends.fast_path import compile_stance, eager_reason, unfuse_for_loras
from .cache import LoadedModel, PipelineCache, default_budget, weights_bytes
from .catalog import find_config_folder
from .choice import Choice, choose_dtype
from .device import DeviceFacts, probe
from .errors import EngineError, GenerationCancelled, InvalidRequestError, ModelLoadError, OutOfMemoryError, PipelineError
from .auto_model import AUTO, choose_auto_model
from .families import FamilyInfo
from .families.checks import check_family_request
from .loader import ModelSource, hf_cache_dir, inspect_family, load_pipeline, resolve_model
from .lora import AdapterSet, AppliedLora, LoraLoadError, LoraSource, check_fits, download_lora, resolve_lora
from .memory import MemoryPlan, apply_memory_plan, choose_memory_plan, escalate, estimate_activation_bytes, footprint_of, reset_memory_plan
from .pipeline_call import pipeline_kwargs
from .step_cache import check_speed, step_cache
from .quantize import (
    QuantizationReport,
    apply_quantization,
    backend_quantization,
    check_setting,
    checkpoint_quantization,
    installed_packages,
    plan_weights,
    stored_quantization,
    stored_quantization_refusal,
)
from .progress import Progress, pipeline_components, reporting_component_loads, watching_download
from .queue import DeviceQueue, QueueTicket
from .request import EngineInfo, EngineRequest, LoraWeight, ProgressCallback, ResolvedJob, RunOutput, StepCallback
from .samplers import make_scheduler, sampler_label
from .status import CacheInfo, EngineStatusInfo, LoadedModelInfo, PlannedMemoryInfo
from .warmup import IDLE_POLL_S, IDLE_QUIET_S, WARMUP_PROMPT, WARMUP_STEPS, Warmup, plan_warmup
from .weights import HeaderError, estimate_footprint

log = logging.getLogger(__name__)

_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


class Engine:
    """Owns the device and the loaded pipelines; built once in the server lifespan."""

    def __init__(self, settings: Settings, facts: DeviceFacts | None = None) -> None:
        self.settings = settings
        self.facts = facts or probe(settings.device)
        self.dtype_choice = choose_dtype(self.facts, settings.dtype)
        self.dtype = _DTYPES[self.dtype_choice.value]
        self.device = self.facts.torch_device
        self.backends = Backends(settings, self.facts)  # refuses an explicit backend that cannot run here
        # An explicit IMGTOOLS_QUANTIZE that cannot run here is refused now, with the reason, not at the first load.
        self.quantize_installed = installed_packages()
        # Checked against the SD families' backend here: a method for another backend (nncf_int8: OpenVINO) needs it.
        self.quantize_setting = check_setting(settings.quantize, self.facts, installed=self.quantize_installed,
                                              backend=self.backends.choose("sd1").value)
        self._quantized: dict[str, tuple[Choice, QuantizationReport | None]] = {}  # source key -> what ran
        if settings.model_cache_bytes is not None:
            self.budget = Choice(settings.model_cache_bytes, "IMGTOOLS_MODEL_CACHE_BYTES")
        else:
            self.budget = default_budget(self.facts)
        self.cache = PipelineCache(budget_bytes=self.budget.value)
        self.queue = DeviceQueue(settings.max_queue, settings.request_timeout_s)
        self._sources: dict[str, tuple[ModelSource, FamilyInfo]] = {}
        # IMGTOOLS_MODEL=auto picks by device and free memory once, at start, with the reason engine_status shows.
        self.default_model = (
            choose_auto_model(self.facts) if settings.model == AUTO else Choice(settings.model, "IMGTOOLS_MODEL")
        )
        # IMGTOOLS_WARMUP: whether start-up loads and runs the default model once (engine/warmup.py); warm_up() does it.
        self.warmup = Warmup(plan_warmup(
            settings.warmup, compile_mode=self.backends.torch.fast_path.compile.value,
            backend=self.backends.choose(self._default_family() or "sd1").value, engine=settings.engine,
        ))  # fmt: skip
        # Models loaded by requests after start, waiting for their native size's background warm-up: (spec, key).
        self._later_warmups: list[tuple[str | None, str]] = []
        self._later_wake: anyio.Event | None = None  # set while warm_up() listens for them

    # ----- model resolution (cheap: configs only) -----

    def resolve(self, spec: str | None, on_progress: ProgressCallback | None = None) -> tuple[ModelSource, FamilyInfo]:
        """Find a model and its family without loading weights; results are remembered per spec.

        A hub model not in the cache is downloaded here; `on_progress` hears the bytes as they arrive.
        """
        spec = spec or self.settings.model
        if spec == AUTO:
            spec = self.default_model.value
        if spec not in self._sources:
            # Only a hub id has a hub folder to watch; a local path never matches one.
            hub_folder = hf_cache_dir() / ("models--" + spec.strip().replace("/", "--"))
            with watching_download(hub_folder, spec, Progress(on_progress)):
                source = resolve_model(spec, model_dirs=self.settings.model_dirs, offline=self.settings.hf_offline)
            self._sources[spec] = (source, inspect_family(source))
        return self._sources[spec]

    async def aresolve(self, spec: str | None, on_progress: ProgressCallback | None = None) -> tuple[ModelSource, FamilyInfo]:
        """`resolve` off the event loop: a first use may scan folders or download from the hub."""
        return await anyio.to_thread.run_sync(self.resolve, spec, on_progress)

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

    # ----- checking a request (cheap: configs and LoRA headers only) -----

    def check(self, request: EngineRequest, on_progress: ProgressCallback | None = None) -> ResolvedJob:
        """Resolve the model, its family and the LoRAs, fill the family's defaults and check every limit, once.

        Like diffusers' `check_inputs()`: everything after it may assume a valid request. Raises an
        EngineError whose message starts with the parameter at fault. A first use of a hub model
        downloads it here, reporting to `on_progress`.
        """
        source, family = self.resolve(request.model, on_progress)
        label = family.family.label
        if not request.seeds:
            raise InvalidRequestError("num_images", "at least one image (one seed per image)")
        if request.mode in ("img2img", "inpaint", "instruct") and request.image is None:
            raise InvalidRequestError("image", f"{request.mode} needs an input image")
        if request.mode == "inpaint" and request.mask is None:
            raise InvalidRequestError("mask", "inpaint needs a mask")
        controlnets: list[dict] = []
        for key in request.extra:
            if key == "control":  # ControlNet maps (engine/control.py): family x type checked against its registry
                from .control import check_controls

                sources = check_controls(request.extra[key], family, dirs=self.settings.controlnet_dirs, offline=self.offline, mode=request.mode)
                controlnets = [source.describe() for source in sources]
                continue
            if key == "ip_adapter":  # reference images on SD 1.x/SDXL (engine/ip_adapter.py), adapters found like LoRAs
                from .ip_adapter import check_ip_adapter

                check_ip_adapter(request.extra[key], family, dirs=self.settings.lora_dirs, offline=self.offline)
                continue
            if key == "speed":  # step caches (engine/step_cache.py): First Block Cache on transformers, DeepCache on UNets
                check_speed(request.extra[key])
                continue
            raise InvalidRequestError(key, f"not supported for {label} models")
        width = request.width or family.native_size
        height = request.height or family.native_size
        # Modes, size multiple, sampler and reference images as the family's registry entry declares them.
        notes = check_family_request(family, request, width, height)
        max_pixels = self.settings.max_pixels
        if width * height > max_pixels:
            raise InvalidRequestError(
                "width/height", f"{width}x{height} = {width * height} pixels exceeds IMGTOOLS_MAX_PIXELS={max_pixels}"
            )
        steps = request.steps or family.default_steps
        guidance = request.guidance_scale if request.guidance_scale is not None else family.default_guidance
        if family.inpainting and request.mode == "txt2img":
            raise InvalidRequestError(
                "model",
                f"{source.name} is an inpainting checkpoint (9-channel UNet); use it with inpaint or edit, "
                "or pick a text-to-image model",
            )
        # diffusers runs int(steps * strength) steps and refuses zero.
        strength = request.strength
        if strength is not None and request.mode in ("img2img", "inpaint") and int(steps * strength) < 1:
            raise InvalidRequestError(
                "strength", f"{strength:g} x {steps} steps leaves no denoising step; use strength >= {1 / steps:.3g} or more steps"
            )
        # Unknown, duplicate or other-family LoRAs fail here, before a task id is handed out or a model loaded.
        loras = self.resolve_loras(request.loras, family, source.name)
        return ResolvedJob(request, source, family, loras, width, height, steps, guidance, notes=notes, controlnets=controlnets)

    async def acheck(self, request: EngineRequest, on_progress: ProgressCallback | None = None) -> ResolvedJob:
        """`check` off the event loop: a first use of a model may scan folders or download it from the hub."""
        return await anyio.to_thread.run_sync(self.check, request, on_progress)

    # ----- queue -----

    @property
    def queue_length(self) -> int:
        return self.queue.waiting

    @property
    def busy(self) -> bool:
        return self.queue.busy

    def admit(self) -> QueueTicket:
        """Take a place in the queue now for work that will run later (a background task), or raise EngineBusyError.

        Pass the ticket to each of that work's `generate(..., ticket=)` calls; leave its `with` (or call
        `release()`) when the work ends.
        """
        return self.queue.admit()

    # ----- loading -----

    def _estimate_bytes(self, source: ModelSource) -> int:
        """The model's weights once loaded, from its files' headers; 0 when they cannot be read."""
        assert source.path is not None
        try:
            return estimate_footprint(source.kind, source.path, self.dtype.itemsize).total_bytes
        except (HeaderError, OSError) as exc:
            log.warning("cannot estimate the size of %s before loading (%s); making room after", source.spec, exc)
            return 0

    def _load(self, source: ModelSource, family: FamilyInfo, progress: Progress) -> LoadedModel:
        started = time.perf_counter()
        # Evict before loading, so the old and the new weights are never in memory together.
        self.cache.make_room(self._estimate_bytes(source))
        config = None
        if source.kind == "file":
            assert source.path is not None
            config = find_config_folder(source.path, family, self.settings.model_dirs, hf_cache_dir())
        assert source.path is not None
        if source.kind != "file":
            refusal = stored_quantization_refusal(stored_quantization(source.path), self.facts.kind)
            if refusal is not None:
                raise ModelLoadError(f"model: {source.name!r} cannot load here: {refusal}")
        components = pipeline_components(source.path) if source.kind != "file" else []
        total = float(len(components)) if components else None
        progress(f"loading {source.name}: {', '.join(components) or 'single-file checkpoint'}", 0.0, total)
        with reporting_component_loads(progress, source.name, len(components)):
            pipe = load_pipeline(source, family, self.dtype, config=config, offline=self.offline)
        progress(f"loaded {source.name} in {time.perf_counter() - started:.1f} s; placing it on {self.device}", total, total)
        for done in self.backends.torch.setup_pipeline(
            pipe, family.family.value, self.dtype_choice.value
        ):
            log.info("%s: %s", source.name, done)
        backend = self.backends.choose(family.family.value)
        footprint = footprint_of(pipe)
        # Weights the checkpoint stored quantized (GGUF, SDNQ, bitsandbytes) are used as they are, never quantized again.
        stored = checkpoint_quantization(pipe)
        # The ladder with quantized rungs (engine/quantize.py): quantize first, then place the smaller weights.
        planned = self._plan_weights(family, footprint, family.native_size, family.native_size, 1, backend.value,
                                     quantize="none" if stored else None)  # fmt: skip
        # A backend's own method (nncf_int8) is applied when that backend converts the model; torch methods now.
        on_backend = None if stored else backend_quantization(pipe, planned.quantization, self.dtype.itemsize)
        quantized = stored or on_backend or apply_quantization(pipe, planned.quantization, footprint)
        self._quantized[source.key] = (planned.quantization, quantized)
        if quantized is not None and on_backend is None and backend.value != "torch":
            # Other backends convert the torch weights themselves and do not read torchao's tensors.
            backend = Choice("torch", f"quantized weights ({quantized.method}) run on torch")
        size = weights_bytes(pipe)
        plan = planned.memory
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
            backend_quantization=on_backend,
        )
        self.cache.put(source.key, model)
        self.cache.make_room(0, keep=source.key)  # in case it measured larger than estimated
        return model

    def _choose_plan(self, family: FamilyInfo, footprint: Any, width: int, height: int, batch: int):
        spec = family.family
        activations = estimate_activation_bytes(
            spec.activation_shape or "dit", width, height, batch, self.dtype.itemsize,
            classifier_free_guidance=spec.guidance_knob != "distilled",
        )
        # Free memory changes as models come and go, so it is measured again for every load.
        current = probe(self.facts.torch_device)
        return choose_memory_plan(current, footprint, activations, requested=self.settings.memory)

    def _plan_weights(self, family: FamilyInfo, footprint: Any, width: int, height: int, batch: int, backend: str = "torch",
                      quantize: str | None = None):  # fmt: skip
        spec = family.family
        activations = estimate_activation_bytes(
            spec.activation_shape or "dit", width, height, batch, self.dtype.itemsize,
            classifier_free_guidance=spec.guidance_knob != "distilled",
        )
        current = probe(self.facts.torch_device)
        return plan_weights(
            current, footprint, activations, dtype_bytes=self.dtype.itemsize, quantize=quantize or self.settings.quantize,
            memory=self.settings.memory, installed=self.quantize_installed, backend=backend,
        )

    def _get_loaded(self, source: ModelSource, family: FamilyInfo, progress: Progress) -> tuple[LoadedModel, float]:
        cached = self.cache.get(source.key)
        if cached is not None:
            return cached, 0.0
        model = self._load(source, family, progress)
        return model, model.load_seconds

    async def warm_up(self) -> None:
        """Warm the default model up at start, then each model a request loads later (engine/warmup.py).

        Runs for the server's lifetime when IMGTOOLS_WARMUP says so, and returns at once when it does not.
        Never raises: what happened is in `self.warmup` (engine_status). The server starts it in the background.
        """
        if self.warmup.state != "pending" or self._later_wake is not None:
            return
        await self._warm_default()
        while True:
            self._later_wake = anyio.Event()
            if not self._later_warmups:
                await self._later_wake.wait()
            while self._later_warmups:
                spec, key = self._later_warmups.pop(0)
                try:
                    await self._warm_later(spec, key)
                except anyio.get_cancelled_exc_class():
                    raise
                except Exception:  # a warm-up must never take the server down; the next request compiles instead
                    log.exception("warm-up after load failed for %s", key)

    async def _warm_default(self) -> None:
        warmup = self.warmup
        spec = self.default_model.value
        try:
            # A model not on disk yet is downloaded by its first request, not now; found, check() reuses what was read.
            if spec not in self._sources:
                self._sources[spec] = self._local_source(spec)
            job = await self.acheck(self._warmup_request(spec))
        except (EngineError, OSError, ValueError) as exc:
            warmup.skip(f"{spec}: {exc}")
            log.info("warm-up skipped: %s", warmup.detail)
            return
        job.warmup = True
        warmup.start(job.source.name, f"{job.width}x{job.height}")
        log.info("warm-up: %s", warmup.detail)
        result = await self._run_warmup(warmup, job, partial(self._generate_sync, job, None))
        if result is not None:
            warmup.finish(result.timings, result.engine.backend_notes)
            log.info("warm-up: %s in %.1f s", warmup.detail, warmup.seconds)

    async def _warm_later(self, spec: str | None, key: str) -> None:
        """Run a model's native size once after a request loaded it at another, when the device is idle."""
        await self._device_quiet()
        model = next((loaded for loaded in self.cache.loaded() if loaded.source.key == key), None)
        if model is None:  # evicted meanwhile: loading it again for a warm-up would cost more than it saves
            return
        try:
            job = await self.acheck(self._warmup_request(spec))
        except (EngineError, OSError, ValueError) as exc:
            log.info("warm-up after load skipped for %s: %s", model.source.name, exc)
            return
        job.warmup = True
        shape = self._request_shape(model, job)
        if shape.denoiser_shape in model.shapes_run:
            return  # a request has already run (and compiled) that shape
        name, size = job.source.name, f"{job.width}x{job.height}"
        warmup = self.warmup.add_later(name, f"{name} was loaded by a request at another size; its native size runs "
                                       "once in the background while the device is idle")  # fmt: skip
        capabilities = self.backends.get(model.backend).capabilities
        kept = capabilities.compiled_shapes
        if kept is not None and len(model.shapes_run) >= kept:
            warmup.size = size
            warmup.skip(f"{capabilities.label} keeps {kept} compiled denoiser shape(s) per model: compiling {size} "
                        f"would replace one that {name}'s requests ran")  # fmt: skip
            log.info("warm-up after load skipped: %s", warmup.detail)
            return
        warmup.start(name, size)
        warmup.detail = f"running {WARMUP_STEPS} steps of {name} at {size}"
        log.info("warm-up after load: %s", warmup.detail)

        def work(on_progress: ProgressCallback, cancel: threading.Event) -> RunOutput | None:
            if key not in self.cache:  # evicted while this waited for the device
                return None
            return self._generate_sync(job, None, on_progress, cancel)

        result = await self._run_warmup(warmup, job, work)
        if result is None and warmup.state == "running":
            warmup.skip(f"{name} was unloaded before its warm-up ran")
        elif result is not None:
            warmup.finish(result.timings, result.engine.backend_notes, f"{name} run at {size} in the background after its load")
            log.info("warm-up after load: %s in %.1f s", warmup.detail, warmup.seconds)

    async def _device_quiet(self) -> None:
        """Return once no run has held or waited for the device for IDLE_QUIET_S (requests first; a sweep's cells follow
        one another closer than that, and an accepted background job's ticket counts as waiting)."""
        quiet_since: float | None = None
        while quiet_since is None or time.monotonic() - quiet_since < IDLE_QUIET_S:
            if self.queue.busy or self.queue.waiting:
                quiet_since = None
            elif quiet_since is None:
                quiet_since = time.monotonic()
            await anyio.sleep(IDLE_POLL_S)

    def _warmup_request(self, spec: str | None) -> EngineRequest:
        """The shape of a plain first `generate`: native size, one image, the family's default guidance."""
        return EngineRequest(mode="txt2img", model=spec, prompt=WARMUP_PROMPT, steps=WARMUP_STEPS)

    async def _run_warmup(self, warmup: Warmup, job: ResolvedJob, work: Callable[..., RunOutput | None]) -> RunOutput | None:
        """Run a warm-up through the device queue; a failure is recorded in `warmup`, never raised."""

        def on_progress(message: str, done: float | None = None, total: float | None = None) -> None:
            warmup.progress(message)

        try:
            result, _ = await self.queue.run(f"warmup:{job.source.name}", partial(work, on_progress))
        except anyio.get_cancelled_exc_class():
            warmup.fail("stopped: the server shut down during the warm-up")
            raise
        except Exception as exc:  # the warm-up failing must not take the server with it; requests still load the model
            failure = exc if isinstance(exc, EngineError) else self._pipeline_failure(exc)
            warmup.fail(str(failure))
            log.warning("warm-up failed: %s", warmup.detail)
            return None
        return result

    def _after_load(self, job: ResolvedJob) -> None:
        """A request loaded its model: queue the native size's warm-up when the warm-up loop is listening."""
        if self._later_wake is None or not self.warmup.choice.value or job.warmup or job.family.inpainting:
            return
        self._later_warmups.append((job.request.model, job.source.key))
        self._later_wake.set()

    # ----- generation -----

    async def generate(
        self,
        job: ResolvedJob,
        on_step: StepCallback | None = None,
        *,
        ticket: QueueTicket | None = None,
        on_progress: ProgressCallback | None = None,
    ) -> RunOutput:
        """Run a checked job when the device is free; `ticket` is the place `admit()` took for background work."""
        work = partial(self._generate_sync, job, on_step, on_progress)
        try:
            result, waited = await self.queue.run(f"{job.mode}:{job.source.name}", work, ticket=ticket)
        except EngineError:
            raise
        except Exception as exc:  # a failing pipeline fails this request only; the engine and the queue go on
            raise self._pipeline_failure(exc) from exc
        result.timings["queue_s"] = round(waited, 4)
        if result.timings.get("load_s", 0) > 0:
            self._after_load(job)
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
        self, job: ResolvedJob, on_step: StepCallback | None, on_progress: ProgressCallback | None, cancel: threading.Event
    ) -> RunOutput:
        started = time.perf_counter()
        source = job.source
        progress = Progress(on_progress)
        model, load_s = self._get_loaded(source, job.family, progress)
        applied = self._apply_loras(model, job, progress)
        warnings: list[str] = []
        # The model's backend computes what it can of this request; torch the rest (e.g. with LoRAs active).
        shape = self._request_shape(model, job)
        spec = job.family.family
        single_pass = spec.guidance_knob in ("distilled", "none") or (spec.guidance_knob == "cfg" and job.guidance_scale <= 1)
        with contextlib.ExitStack() as call_scope:
            # Hooks live for this call only and are removed after it, so the next request runs untouched.
            backend_run = call_scope.enter_context(self.backends.running(model, model.pipeline(job.mode), shape, progress))
            # After the backend: a UNet it serves (OpenVINO) has no torch blocks to hook, and the cache says so.
            cached = call_scope.enter_context(
                step_cache(model.pipeline(job.mode), job.request.extra.get("speed", "quality"), single_pass=single_pass)
            )
            if cached is not None and cached.method == "none":
                warnings.append(f"speed: {cached.reason}")
            eager = eager_reason(
                model.base, plan=model.plan, loras_active=shape.loras_active, speed=job.request.extra.get("speed", "quality"),
                extras=shape.unet_extras,
            )
            if eager is not None:
                backend_run.notes.append(f"compiled denoiser not used for this request: {eager}")
            call_scope.enter_context(compile_stance(eager))
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
                with compile_stance(eager_reason(model.base, plan=model.plan, loras_active=False, speed="quality", extras=False)):
                    images, label, steps_run = self._denoise(model, job, on_step, cancel)
        if not shape.loras_active and not shape.unet_extras:
            model.shapes_run.add(shape.denoiser_shape)
        if backend_run.prepare_seconds:
            self.cache.make_room(0, keep=source.key)  # compiled graphs count against the budget too
        denoise_s = time.perf_counter() - started - load_s
        engine = self.describe_choices(model)
        engine.backend, engine.backend_reason = backend_run.backend, backend_run.reason
        engine.backend_components, engine.backend_notes = dict(backend_run.components), list(backend_run.notes)
        engine.step_cache = cached.as_dict() if cached is not None else None
        if backend_run.quantization is not None:
            engine.quantization = dict(backend_run.quantization)
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
            engine=engine,
            warnings=warnings,
            loras=applied,
        )

    def _request_shape(self, model: LoadedModel, job: ResolvedJob) -> RequestShape:
        unet_config = getattr(getattr(model.base, "unet", None), "config", None)
        # Pipelines skip classifier-free guidance at guidance <= 1 and for guidance-distilled (LCM) UNets.
        guided = job.guidance_scale > 1 and getattr(unet_config, "time_cond_proj_dim", None) is None
        loras_active = bool(model.adapters is not None and model.adapters.active)
        return RequestShape(job.mode, job.width, job.height, len(job.seeds), guided, loras_active, warmup=job.warmup,
                            speed=job.request.extra.get("speed", "quality"), unet_extras=_unet_extras(job))

    def _apply_loras(self, model: LoadedModel, job: ResolvedJob, progress: Progress) -> list[AppliedLora]:
        """Activate exactly the job's adapters (loading each once); a job without LoRAs runs without any."""
        if model.adapters is None:
            return []
        wanted = []
        for lora, weight in job.loras:
            if lora.path is None:  # a hub LoRA used for the first time
                folder = hf_cache_dir() / ("models--" + str(lora.repo_id).replace("/", "--"))
                with watching_download(folder, lora.spec, progress):
                    lora = download_lora(lora, hub_cache=hf_cache_dir())
            wanted.append((lora, weight))
        if wanted:
            unfused = unfuse_for_loras(model.base)
            if unfused is not None:
                log.info("%s: %s", job.source.name, unfused)
        applied = model.adapters.apply(model.base, wanted, job.source.name)
        if any(weight for _, weight in wanted):
            self.cache.make_room(0, keep=job.source.key)  # new adapters count against the budget too
        return list(applied)

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
        self, model: LoadedModel, job: ResolvedJob, on_step: StepCallback | None, cancel: threading.Event
    ) -> tuple[list[Any], str, int]:
        pipe = model.pipeline(job.mode)
        sampler = job.request.sampler
        scheduler = make_scheduler(sampler, model.scheduler_config, job.family.family.sampler_kind)
        if scheduler is None:
            # The model's own scheduler class, from its config: `base.scheduler` may hold the previous request's sampler.
            import diffusers

            own = getattr(diffusers, model.scheduler_config.get("_class_name", ""), None) or type(model.base.scheduler)
            scheduler = own.from_config(model.scheduler_config)
        pipe.scheduler = scheduler
        label = sampler_label(sampler, type(scheduler).__name__)
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

        kwargs = pipeline_kwargs(job, model, generators, step_end)
        if job.request.extra.get("control"):
            from .control import check_controls, control_call

            sources = check_controls(
                job.request.extra["control"], job.family, dirs=self.settings.controlnet_dirs, offline=self.offline, mode=job.mode
            )
            pipe, kwargs = control_call(model, job, pipe, kwargs, sources)
        with contextlib.ExitStack() as adapters:
            if job.request.extra.get("ip_adapter"):
                from .ip_adapter import check_ip_adapter, loaded_for_call

                references = job.request.extra["ip_adapter"]
                source = check_ip_adapter(references, job.family, dirs=self.settings.lora_dirs, offline=self.offline)
                kwargs.update(adapters.enter_context(loaded_for_call(pipe, references, source)))
            with torch.inference_mode():
                images = pipe(**kwargs).images
        return images, label, steps_done

    # ----- introspection -----

    def describe_choices(self, model: LoadedModel | None = None) -> EngineInfo:
        """Device, dtype, backend and (with a model) memory plan, each with the reason it was chosen."""
        info = EngineInfo(
            device=self.device,
            device_name=self.facts.name,
            dtype=self.dtype_choice.value,
            dtype_reason=self.dtype_choice.reason,
            backend="torch",
        )
        if model is not None:
            info.backend, info.backend_reason = model.backend, model.backend_reason
            info.memory_plan, info.memory_plan_reason = model.plan, model.plan_reason
            quantization, report = self._quantized.get(model.source.key, (None, None))
            if report is not None:
                info.quantization = report.as_dict()
            elif quantization is not None:
                info.quantization = {"method": "none", "reason": quantization.reason}
            vae = getattr(model.base, "vae", None)
            if isinstance(vae, torch.nn.Module):
                info.vae_dtype = str(vae.dtype).removeprefix("torch.")  # differs where fp16 would overflow
        else:
            family = self._default_family()
            choice = self.backends.choose(family or "sd1")
            info.backend = choice.value
            info.backend_reason = choice.reason if family else f"for SD-family models: {choice.reason}"
        return info

    def planned_memory(self, spec: str | None = None) -> PlannedMemoryInfo | None:
        """The plan a model would get, from its files' sizes, without loading it (None if it is not local)."""
        spec = spec or self.default_model.value
        try:
            source, family = self._sources.get(spec) or self._local_source(spec)
            assert source.path is not None
            footprint = estimate_footprint(source.kind, source.path, self.dtype.itemsize)
            choice = self._choose_plan(family, footprint, family.native_size, family.native_size, 1)
        except (EngineError, HeaderError, OSError, ValueError) as exc:
            log.debug("no plan estimate for %s: %s", spec, exc)
            return None
        return PlannedMemoryInfo(
            model=spec,
            memory_plan=choice.value.value,
            reason=choice.reason,
            estimated_weights_bytes=footprint.total_bytes,
            at_size=f"{family.native_size}x{family.native_size}",
        )

    def _default_family(self) -> str | None:
        """The default model's family when it is known or local (configs only, nothing downloaded); else None."""
        spec = self.default_model.value
        try:
            _, family = self._sources.get(spec) or self._local_source(spec)
        except (EngineError, OSError, ValueError) as exc:
            log.debug("default model %s not local (%s); backend shown for SD-family models", spec, exc)
            return None
        return family.family.value

    def _local_source(self, spec: str) -> tuple[ModelSource, FamilyInfo]:
        source = resolve_model(spec, model_dirs=self.settings.model_dirs, offline=True)
        return source, inspect_family(source)

    def status(self) -> EngineStatusInfo:
        """What engine_status shows; reads state only, safe to call while a job runs."""
        try:
            facts = probe(self.settings.device)  # free memory now, not at start-up
        except (ValueError, RuntimeError) as exc:
            log.debug("re-probing %s failed (%s); showing start-up facts", self.settings.device, exc)
            facts = self.facts
        loaded = []
        for model in self.cache.loaded():
            adapters = model.lora_status()
            loaded.append(
                LoadedModelInfo(
                    model=model.describe(),
                    memory_plan_reason=model.plan_reason,
                    memory_bytes=model.memory_bytes,
                    idle_s=round(time.monotonic() - model.last_used, 1),
                    adapter_bytes=adapters["adapter_bytes"],
                    loras_loaded=adapters["loras_loaded"],
                    loras_active=adapters["loras_active"],
                    quantization=self.backends.quantization_info(model) or (
                        report.as_dict() if (report := self._quantized.get(model.source.key, (None, None))[1]) else None),
                )
            )
        choices = self.describe_choices()
        return EngineStatusInfo(
            device=choices.device,
            device_name=choices.device_name,
            dtype=choices.dtype,
            dtype_reason=choices.dtype_reason,
            backend=choices.backend,
            backend_reason=choices.backend_reason,
            backends=self.backends.status(),
            device_total_bytes=facts.total_memory_bytes,
            device_free_bytes=facts.free_memory_bytes,
            memory_setting=self.settings.memory,
            default_model_plan=None if loaded else self.planned_memory(),
            cache=CacheInfo(
                budget_bytes=self.cache.budget_bytes,
                budget_reason=self.budget.reason,
                used_bytes=self.cache.used_bytes(),
                evictions=list(self.cache.evictions),
            ),
            loaded_models=loaded,
            queue_length=self.queue.waiting,
            max_queue=self.settings.max_queue,
            running=self.queue.running,
            running_s=self.queue.running_seconds(),
            default_model=self.default_model.value,
            default_model_reason=self.default_model.reason,
            warmup=self.warmup.as_dict(),
        )

    async def aclose(self) -> None:
        for model in self.cache.loaded():
            self.cache.evict(model.source.key, reason="engine closed")


def _unet_extras(job: ResolvedJob) -> bool:
    """Whether ControlNet residuals or IP-Adapter image embeddings enter the denoiser's blocks in this job."""
    return bool(job.request.extra.get("control") or job.request.extra.get("ip_adapter"))
