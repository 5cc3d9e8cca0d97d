"""OpenVINO on the CPU: the UNet and VAE decoder converted once, kept on disk, and called in place of the torch modules.

How it works, and why:
- Conversion (`openvino.convert_model` on a traced module) takes ~20 s for SD 1.5 and ~1 min for SDXL on a
  2-core CPU (benchmarks/warm_load.py, unet_step.py), so it happens on the first request that can use it,
  and the IR is saved under
  `<IMGTOOLS_CACHE_DIR>/openvino/<key>/`; the key hashes the model's component files (path, size, mtime),
  its torch dtype, the converter version and the openvino/torch/diffusers versions. A later process reads
  the IR and compiles it in seconds (OpenVINO's own CACHE_DIR keeps the compiled blobs as well).
- The IR has dynamic batch and spatial dimensions, so it is converted once per model, not per size. The UNet
  is then compiled for each request's static shape: on a quiet machine that ran SD 1.5 at 512² 7% faster
  than the dynamic graph (2.10 vs 2.26 s/step, benchmarks/unet_step.py). Only the last shape stays in memory
  (each compiled shape is another copy of the weights); a new shape compiles in ~4 s for SD 1.5, or ~1 s
  when OpenVINO's CACHE_DIR has it, which costs about the weights' size on disk per shape. The VAE decoder
  stays dynamic (its tiles come in several shapes, and static was no faster there).
- It is compiled with bf16 inference precision where the CPU runs bf16 natively (AMX / AVX512-BF16).
- IMGTOOLS_QUANTIZE=nncf_int8 (or int8 / auto where RAM is short and no torch int8 method is installed) writes
  the UNet's IR with int8 weights (`nncf.compress_weights`, INT8_ASYM): half the bf16 IR on disk and compiled in
  memory. The weights are part of the IR's key, so bf16 and int8 IRs of one model sit side by side in the cache.
  It saves memory, not time: the CPU dequantizes the weights every step (SD 1.5 at 512²: 7.3 vs 1.8 s/step in
  bf16, benchmarks/int8_cpu.py). int8 activations (`nncf_w8a8`, and `auto` on VNNI/AMX CPUs) are faster:
  openvino_int8.py calibrates them on a model's first requests and swaps the UNet's compiled part once ready,
  and the VAE decoder's with it where its own measured drift is small.
- `speed` balanced/fast (DeepCache): the UNet's IR has a second output, its deep feature, and a small shallow IR
  (openvino_deep_cache.py) is converted on the first such request; on a reused step only the shallow IR runs.
- Text encoders, the VAE encoder and the scheduler stay in torch: they are a small share of the time.
- What a traced graph cannot do runs on torch for that request, with the reason in the result: sizes whose
  latents the UNet cannot halve evenly at every level (traced graphs bake the up-sampling sizes), active LoRA
  adapters (the IR has the base weights only), UNets with extra conditioning inputs, a failed conversion.
  A call the stand-in module does not understand mid-run (cross_attention_kwargs, ControlNet residuals)
  is passed to the torch module, so an image is never computed wrongly.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import shutil
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch

from . import openvino_int8
from .base import Backend, BackendRun, Capabilities, RequestShape
from .openvino_deep_cache import DeepFeature, ShallowUNet, has_deep_split
from .openvino_int8 import Int8Activations

if TYPE_CHECKING:
    from ..cache import LoadedModel
    from ..device import DeviceFacts
    from ..progress import Progress

log = logging.getLogger(__name__)

# Bump when the traced wrappers below change, so IRs made by older code are not reused.
# 2: the UNet's IR has a second output, its deep feature, for DeepCache (openvino_deep_cache.py).
CONVERTER_VERSION = 2
OPENVINO_FAMILIES = frozenset({"sd1", "sd2", "sdxl"})
COMPONENTS = ("unet", "vae_decoder")
SHALLOW = "unet_shallow"  # the UNet's outermost level, for speed=balanced/fast (openvino_deep_cache.py)
MAX_STATIC_SHAPES = 1  # compiled UNet shapes kept per model: each is another copy of the weights in memory
# Example inputs for tracing are small: tracing runs the module once, and the IR's dimensions are dynamic anyway.
_TRACE_LATENT = 16
_TRACE_TOKENS = 77


ShapeKey = tuple[tuple[str, tuple[int, ...]], ...]


@dataclass
class CompiledPart:
    """One component's IR, compiled for the CPU: once with dynamic shapes, or per input shape (static).

    Static shapes ran the SD 1.5 UNet 7% faster than the dynamic graph (benchmarks/unet_step.py), so the UNet
    is compiled for each request's shape, keeping the last MAX_STATIC_SHAPES in memory (each holds its own
    copy of the weights); OpenVINO's CACHE_DIR makes a shape seen before compile in about a second. The VAE
    decoder stays dynamic: the VAE's own tiling calls it with several tile shapes, and dynamic ran as fast.
    """

    component: str
    core: Any  # openvino.Core, with CACHE_DIR set
    ir_path: Path
    precision: str
    static: bool
    weights_bytes: int  # of one compiled copy
    on_compiled: Any  # callable(component, shape_text, seconds): reports each compilation
    _model: Any = None
    _compiled: OrderedDict[ShapeKey | None, tuple[Any, Any]] = field(default_factory=OrderedDict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def compile_for(self, shapes: dict[str, tuple[int, ...]] | None) -> tuple[Any, Any]:
        """The compiled model and its infer request for these input shapes (None: the dynamic graph)."""
        key = tuple(sorted((name, tuple(shape)) for name, shape in shapes.items())) if self.static and shapes else None
        if key in self._compiled:
            self._compiled.move_to_end(key)
            return self._compiled[key]
        started = time.perf_counter()
        if key is None:
            compiled = self.core.compile_model(str(self.ir_path), "CPU", compile_options(self.precision))
        else:
            if self._model is None:
                self._model = self.core.read_model(str(self.ir_path))
            self._model.reshape({name: list(shape) for name, shape in key})
            compiled = self.core.compile_model(self._model, "CPU", compile_options(self.precision))
        while len(self._compiled) >= MAX_STATIC_SHAPES:
            self._compiled.popitem(last=False)
        entry = (compiled, compiled.create_infer_request())
        self._compiled[key] = entry
        shapes_by_name = dict(key or ())
        main_input = "sample" if "sample" in shapes_by_name else next(iter(shapes_by_name), None)
        shape_text = "" if main_input is None else f"{main_input} " + "x".join(map(str, shapes_by_name[main_input]))
        self.on_compiled(self.component, shape_text, time.perf_counter() - started)
        return entry

    def __call__(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        return self.outputs(feeds, 1)[0]

    def outputs(self, feeds: dict[str, np.ndarray], count: int) -> list[np.ndarray]:
        """The first `count` outputs for these inputs (the UNet's second one is its deep feature)."""
        with self._lock:
            _, request = self.compile_for({name: array.shape for name, array in feeds.items()})
            request.infer(feeds, share_inputs=True)
            # The request reuses its output buffers on the next call; the caller keeps copies.
            return [np.array(request.get_output_tensor(i).data, copy=True) for i in range(count)]

    def release(self) -> None:
        """Drop the compiled shapes (another part serves this component now); the IR stays on disk."""
        with self._lock:
            self._compiled.clear()

    @property
    def bytes(self) -> int:
        return self.weights_bytes * max(1, len(self._compiled))


@dataclass
class OpenVINOState:
    """What the OpenVINO backend holds for one loaded model: compiled parts, and components it gave up on."""

    parts: dict[str, CompiledPart] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)  # component -> why conversion/compilation failed
    int8: Int8Activations | None = None  # the UNet's int8-activation IR (openvino_int8.py), where chosen
    unet_part: CompiledPart | None = None  # what serves the UNet in this request: parts["unet"] or the int8 one

    @property
    def bytes(self) -> int:
        int8 = sum(part.bytes for part in (self.int8.part, self.int8.decoder_part) if part is not None) if self.int8 else 0
        return sum(part.bytes for part in self.parts.values()) + int8


class _UNetForTrace(torch.nn.Module):
    """The UNet with plain tensor inputs and outputs, in fp32 at the graph's edges (numpy has no bf16).

    Outputs the noise prediction and, where the UNet has levels below the outermost one, its deep feature
    (up_blocks[-2]'s output), which a DeepCache step hands the shallow IR (openvino_deep_cache.py).
    """

    def __init__(self, unet: torch.nn.Module) -> None:
        super().__init__()
        self.unet = unet

    def run(self, sample: torch.Tensor, timestep: torch.Tensor, encoder_hidden_states: torch.Tensor, **kwargs: Any) -> Any:
        dtype = self.unet.dtype
        if not has_deep_split(self.unet):
            return self.unet(sample.to(dtype), timestep, encoder_hidden_states.to(dtype), return_dict=False, **kwargs)[0].float()
        with DeepFeature(self.unet) as deep:
            out = self.unet(sample.to(dtype), timestep, encoder_hidden_states.to(dtype), return_dict=False, **kwargs)[0]
        assert deep.value is not None
        return out.float(), deep.value.float()

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor, encoder_hidden_states: torch.Tensor) -> Any:
        return self.run(sample, timestep, encoder_hidden_states)


class _SDXLUNetForTrace(_UNetForTrace):
    """As _UNetForTrace, with SDXL's pooled text embeddings and size/crop time ids."""

    def forward(  # type: ignore[override]
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        text_embeds: torch.Tensor,
        time_ids: torch.Tensor,
    ) -> Any:
        dtype = self.unet.dtype
        added = {"text_embeds": text_embeds.to(dtype), "time_ids": time_ids.to(dtype)}
        return self.run(sample, timestep, encoder_hidden_states, added_cond_kwargs=added)


class _DecoderForTrace(torch.nn.Module):
    def __init__(self, decoder: torch.nn.Module) -> None:
        super().__init__()
        self.decoder = decoder

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        dtype = next(self.decoder.parameters()).dtype
        return self.decoder(latents.to(dtype)).float()


class OpenVINOUNet(torch.nn.Module):
    """Stands in for a pipeline's UNet during one run: same call, config, dtype and device; OpenVINO computes.

    Every attribute it does not define is read from the torch UNet (pipelines read `config`,
    `add_embedding`, `encoder_hid_proj`, ...); the torch UNet is held outside the module tree so its
    weights are not this module's.
    """

    def __init__(
        self, original: torch.nn.Module, part: CompiledPart, run: BackendRun, sdxl: bool, keep: Any = None,
        shallow: CompiledPart | None = None, shallow_refused: str | None = None,
    ) -> None:  # fmt: skip
        super().__init__()
        object.__setattr__(self, "_original", original)
        object.__setattr__(self, "_part", part)
        object.__setattr__(self, "_run", run)
        object.__setattr__(self, "_sdxl", sdxl)
        object.__setattr__(self, "_keep", keep)  # callable(feeds): keeps the inputs for int8 calibration
        object.__setattr__(self, "_shallow", shallow)  # the shallow IR, for speed=balanced/fast
        object.__setattr__(self, "_shallow_refused", shallow_refused)
        object.__setattr__(self, "_cadence", None)  # step_cache.Cadence while a DeepCache request runs
        object.__setattr__(self, "_deep", None)  # the last full pass's deep feature

    def deep_cache_refusal(self) -> str | None:
        """Why this run cannot reuse deep features (engine/step_cache.py asks before `deep_cache`); None: it can."""
        if self._shallow is not None:
            return None
        if self._shallow_refused is not None:
            return f"the UNet's shallow OpenVINO IR is not available ({self._shallow_refused}); ran at quality"
        if not has_deep_split(self._original):
            return "the UNet has a single resolution level, so nothing lies below the shallow path; ran at quality"
        return "the UNet's shallow OpenVINO IR was not prepared for this request; ran at quality"

    @contextmanager
    def deep_cache(self, cadence: Any) -> Iterator[None]:
        """Reuse the last full pass's deep feature on the passes `cadence` says, through the shallow IR."""
        object.__setattr__(self, "_cadence", cadence)
        try:
            yield
        finally:
            object.__setattr__(self, "_cadence", None)
            object.__setattr__(self, "_deep", None)

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(object.__getattribute__(self, "_original"), name)

    @property
    def dtype(self) -> torch.dtype:
        return self._original.dtype

    @property
    def device(self) -> torch.device:
        return self._original.device

    def forward(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor | float | int,
        encoder_hidden_states: torch.Tensor,
        *args: Any,
        added_cond_kwargs: dict[str, torch.Tensor] | None = None,
        return_dict: bool = True,
        **kwargs: Any,
    ) -> Any:
        unusual = _unusual_unet_call(args, kwargs, timestep)
        if unusual is None and self._sdxl and not (added_cond_kwargs and {"text_embeds", "time_ids"} <= set(added_cond_kwargs)):
            unusual = "SDXL call without text_embeds/time_ids"
        if unusual is not None:
            self._fall_back(unusual)
            if self._cadence is not None:  # a full torch pass: counted, and no deep feature of it to reuse
                self._cadence.reuse(float(torch.as_tensor(timestep).reshape(-1)[0]), tuple(sample.shape), have_features=False)
                object.__setattr__(self, "_deep", None)
            return self._original(
                sample, timestep, encoder_hidden_states, *args, added_cond_kwargs=added_cond_kwargs, return_dict=return_dict, **kwargs
            )
        feeds = {
            "sample": _to_numpy(sample),
            "timestep": np.asarray([float(torch.as_tensor(timestep).reshape(-1)[0])], dtype=np.float32),
            "encoder_hidden_states": _to_numpy(encoder_hidden_states),
        }
        if self._sdxl:
            assert added_cond_kwargs is not None
            feeds["text_embeds"] = _to_numpy(added_cond_kwargs["text_embeds"])
            feeds["time_ids"] = _to_numpy(added_cond_kwargs["time_ids"])
        if self._keep is not None:
            self._keep(feeds)
        out = torch.from_numpy(self._compute(feeds, float(feeds["timestep"][0]))).to(device=sample.device, dtype=sample.dtype)
        if not return_dict:
            return (out,)
        from diffusers.models.unets.unet_2d_condition import UNet2DConditionOutput

        return UNet2DConditionOutput(sample=out)

    def _compute(self, feeds: dict[str, np.ndarray], t: float) -> np.ndarray:
        cadence = self._cadence
        if cadence is None:
            return self._part(feeds)
        if cadence.reuse(t, feeds["sample"].shape, have_features=self._deep is not None):
            return self._shallow({**feeds, "deep": self._deep})
        out, deep = self._part.outputs(feeds, 2)
        object.__setattr__(self, "_deep", deep)
        return out

    def _fall_back(self, why: str) -> None:
        note = f"unet: a call ran on torch ({why})"
        if note not in self._run.notes:
            self._run.notes.append(note)
            log.info("OpenVINO UNet passed a call to torch: %s", why)


def _unusual_unet_call(args: tuple, kwargs: dict[str, Any], timestep: Any) -> str | None:
    """Why a UNet call needs inputs the converted graph does not take; None for a plain call."""
    if args:
        return "positional arguments beyond the first three"
    for name, value in kwargs.items():
        if value is None or (name == "cross_attention_kwargs" and not value):
            continue
        return f"{name} given"
    steps = torch.as_tensor(timestep).reshape(-1)
    if steps.numel() > 1 and not bool((steps == steps[0]).all()):
        return "a different timestep per sample"
    return None


class OpenVINODecoder(torch.nn.Module):
    """Stands in for `vae.decoder` during one run; the VAE's own tiling and post-quant conv still apply around it."""

    def __init__(self, original: torch.nn.Module, part: CompiledPart, run: BackendRun) -> None:
        super().__init__()
        object.__setattr__(self, "_original", original)
        object.__setattr__(self, "_part", part)
        object.__setattr__(self, "_run", run)

    def forward(self, sample: torch.Tensor, latent_embeds: torch.Tensor | None = None) -> torch.Tensor:
        if latent_embeds is not None:
            note = "vae_decoder: a call ran on torch (latent_embeds given)"
            if note not in self._run.notes:
                self._run.notes.append(note)
            return self._original(sample, latent_embeds)
        out = self._part({"latents": _to_numpy(sample)})
        return torch.from_numpy(out).to(device=sample.device, dtype=sample.dtype)


def _to_numpy(tensor: torch.Tensor) -> np.ndarray:
    return tensor.detach().to("cpu", torch.float32).contiguous().numpy()


def expected_shapes(pipe: Any, component: str, shape: RequestShape) -> dict[str, tuple[int, ...]] | None:
    """The UNet input shapes a standard SD/SDXL pipeline call will use for `shape`; None for the dynamic decoder."""
    if component not in ("unet", SHALLOW):
        return None
    config = pipe.unet.config
    batch = shape.unet_batch
    scale = pipe.vae_scale_factor
    shapes = {
        "sample": (batch, config.in_channels, shape.height // scale, shape.width // scale),
        "timestep": (1,),
        # Pipelines pad or truncate prompts to the tokenizer's 77 tokens.
        "encoder_hidden_states": (batch, _TRACE_TOKENS, config.cross_attention_dim),
    }
    if getattr(config, "addition_embed_type", None) == "text_time":
        pooled = pipe.unet.add_embedding.linear_1.in_features - 6 * config.addition_time_embed_dim
        shapes.update(text_embeds=(batch, pooled), time_ids=(batch, 6))
    if component == SHALLOW:  # up_blocks[-2]'s output: the second level's channels at the latents' size
        shapes["deep"] = (batch, deep_channels(config), shape.height // scale, shape.width // scale)
    return shapes


def unet_size_multiple(unet_config: Any, vae_scale_factor: int) -> int:
    """Image sizes the traced UNet handles: its latents must halve evenly at every down-sampling level."""
    downsamplings = len(unet_config.block_out_channels) - 1
    return vae_scale_factor * 2**downsamplings


def unet_unsupported(unet_config: Any) -> str | None:
    """Why a UNet's conditioning inputs are beyond the converted graph (which takes text and SDXL's text_time)."""
    if getattr(unet_config, "time_cond_proj_dim", None) is not None:
        return "the UNet takes a guidance embedding (time_cond_proj_dim, LCM-distilled)"
    if getattr(unet_config, "class_embed_type", None) is not None or getattr(unet_config, "num_class_embeds", None):
        return "the UNet takes class labels"
    if getattr(unet_config, "addition_embed_type", None) not in (None, "text_time"):
        return f"the UNet takes {unet_config.addition_embed_type} conditioning"
    if getattr(unet_config, "encoder_hid_dim_type", None) is not None:
        return "the UNet projects its text input (encoder_hid_dim_type)"
    return None


class OpenVINOBackend(Backend):
    """Runs the UNet and VAE decoder of SD 1.x/2.x/SDXL pipelines with OpenVINO on the CPU."""

    id: ClassVar[str] = "openvino"
    capabilities: ClassVar[Capabilities] = Capabilities(
        label="OpenVINO",
        # OpenVINO also drives Intel GPUs, but this build compiles for the CPU device only.
        device_kinds=frozenset({"cpu"}),
        families=OPENVINO_FAMILIES,
        lora=False,
        any_size=False,
        preferred_on=frozenset({"cpu"}),
        why_preferred="OpenVINO compiles SD-family models for this CPU and runs them faster than torch",
        compiled_shapes=MAX_STATIC_SHAPES,
        package="openvino",
        extra="openvino",
    )
    components: ClassVar[tuple[str, ...]] = COMPONENTS

    def __init__(self, settings: Any, facts: "DeviceFacts") -> None:
        super().__init__(settings, facts)
        self.root = Path(settings.cache_dir).expanduser() / "openvino"
        # bf16 only where the CPU has native bf16: elsewhere OpenVINO would emulate it, slower than fp32.
        self.precision = "bf16" if facts.supports_bf16 else "f32"
        self._core: Any = None
        from ..quantize import installed_packages, normalize_setting

        self.int8_activations = openvino_int8.choose(settings.quantize, facts, installed_packages())
        self.int8_explicit = normalize_setting(settings.quantize) == openvino_int8.METHOD

    # ----- per request -----

    def prepare(self, model: "LoadedModel", shape: RequestShape, progress: "Progress | None" = None) -> dict[str, str]:
        refused: dict[str, str] = {}
        caps = self.capabilities
        family = model.family.family.value
        if caps.families is not None and family not in caps.families:
            return {c: f"openvino is not used for the {family} family" for c in self.components}
        pipe = model.base
        unet_config = pipe.unet.config
        multiple = unet_size_multiple(unet_config, pipe.vae_scale_factor)
        unsupported = unet_unsupported(unet_config)
        if shape.loras_active and not caps.lora:
            refused["unet"] = "LoRA adapters are active and the converted UNet has the base weights only"
        elif shape.unet_extras:
            # Every call would pass to torch anyway; declared up front, the step cache hooks the torch UNet.
            refused["unet"] = "ControlNet residuals or IP-Adapter embeddings go into the UNet's blocks, which the converted graph does not take"
        elif unsupported is not None:
            refused["unet"] = unsupported
        elif not caps.any_size and (shape.width % multiple or shape.height % multiple):
            refused["unet"] = (
                f"{shape.width}x{shape.height} is not a multiple of {multiple}, the size the converted UNet can run"
            )
        state = self.state(model)
        todo = [c for c in self.components if c not in refused and c not in state.failed and c not in state.parts]
        for component in self.components:
            if component in refused:
                continue
            if component in state.failed:
                refused[component] = state.failed[component]
                continue
            try:
                if component not in state.parts:
                    if progress is not None:
                        done = todo.index(component)
                        progress(f"OpenVINO: preparing the {component} of {model.source.name}", float(done), float(len(todo)))
                    state.parts[component] = self._load_part(model, component, progress)
                part = state.parts[component]
                if component == "unet":
                    part = state.unet_part = self._unet_part(model, state)
                # Compile now for the shapes this request will use, so the first step does not pay for it.
                part.compile_for(expected_shapes(pipe, component, shape))
                if part is not state.parts[component]:
                    state.parts[component].release()  # one UNet in memory: the int8 one replaced bf16
                if component == "unet" and shape.speed != "quality":
                    self._prepare_shallow(model, state, shape, progress)
            except Exception as exc:  # conversion can fail on any op the frontend lacks; torch still runs it
                log.warning("OpenVINO %s for %s failed; it runs on torch", component, model.source.spec, exc_info=exc)
                detail = (str(exc).strip().splitlines() or [""])[0][:200]
                state.failed[component] = f"its OpenVINO conversion failed ({type(exc).__name__}: {detail})"
                state.parts.pop(component, None)
                refused[component] = state.failed[component]
        return refused

    def _prepare_shallow(self, model: "LoadedModel", state: OpenVINOState, shape: RequestShape, progress: "Progress | None") -> None:
        """The shallow IR a DeepCache request reuses deep features with; a failure leaves that request at quality."""
        if SHALLOW in state.failed or not has_deep_split(model.base.unet):
            return
        try:
            if SHALLOW not in state.parts:
                state.parts[SHALLOW] = self._load_part(model, SHALLOW, progress)
            state.parts[SHALLOW].compile_for(expected_shapes(model.base, SHALLOW, shape))
        except Exception as exc:  # as for the UNet: the request runs, without the step cache
            log.warning("OpenVINO shallow UNet for %s failed", model.source.spec, exc_info=exc)
            detail = (str(exc).strip().splitlines() or [""])[0][:200]
            state.failed[SHALLOW] = f"its OpenVINO conversion failed ({type(exc).__name__}: {detail})"
            state.parts.pop(SHALLOW, None)

    @contextmanager
    def running(self, pipe: Any, model: "LoadedModel", served: list[str], run: BackendRun) -> Iterator[None]:
        state = self.state(model)
        original_unet = pipe.unet
        original_decoder = pipe.vae.decoder
        int8 = state.int8
        # The start-up warm-up's made-up prompt would be poor calibration data.
        calibrating = "unet" in served and int8 is not None and int8.state == "calibrating" and not run.warmup
        try:
            if "unet" in served:
                sdxl = model.family.family.value == "sdxl"
                part = state.unet_part or state.parts["unet"]
                keep = functools.partial(int8.keep, guided=run.guided) if calibrating else None
                pipe.unet = OpenVINOUNet(original_unet, part, run, sdxl, keep=keep, shallow=state.parts.get(SHALLOW),
                                         shallow_refused=state.failed.get(SHALLOW))  # fmt: skip
                if int8 is not None:
                    run.quantization = int8.as_dict() if part is int8.part or int8.state != "ready" else None
            if "vae_decoder" in served:
                # The int8 decoder goes with the int8 UNet; a request whose UNet runs on torch keeps the bf16 one.
                decoder = self._decoder_part(state) if "unet" in served else state.parts["vae_decoder"]
                pipe.vae.decoder = OpenVINODecoder(original_decoder, decoder, run)
            if "unet" not in served and int8 is not None:
                run.quantization = {"method": "none", "int8_activations": int8.state,
                                    "reason": f"the UNet ran on torch for this request; {openvino_int8.METHOD} applies "
                                              "to the OpenVINO UNet only"}  # fmt: skip
            if "unet" not in served and ir_weights(model, "unet") is not None:
                run.notes.append(f"unet: ran on torch with the model's own weights ({ir_weights(model, 'unet')} "
                                 "applies to the OpenVINO UNet only)")
            yield
        finally:
            if pipe.unet is not original_unet:
                pipe.unet = original_unet
            if pipe.vae.decoder is not original_decoder:
                pipe.vae.decoder = original_decoder
        if calibrating:  # the request completed: its inputs are real calibration data
            assert int8 is not None
            self._calibrate_after(model, int8, original_unet, run)

    def _unet_part(self, model: "LoadedModel", state: OpenVINOState) -> CompiledPart:
        """The int8-activation UNet where it is chosen and ready, else the IR as converted."""
        if not self.int8_activations.value or ir_weights(model, "unet") is not None:
            return state.parts["unet"]
        int8 = state.int8
        if int8 is None:
            folder = self.root / f"{ir_key(model, 'unet')}-w8a8"
            int8 = state.int8 = Int8Activations(explicit=self.int8_explicit, folder=folder,
                                                bytes_before=state.parts["unet"].weights_bytes,
                                                decoder_folder=self.root / f"{ir_key(model, 'vae_decoder')}-w8a8")  # fmt: skip
            if (folder / "model.xml").is_file():  # calibrated before, by this or an earlier server
                int8.finished()
                int8.reason += " (calibrated earlier, read from disk)"
        with int8.lock:
            if int8.state != "ready":
                return state.parts["unet"]
            if int8.part is None:
                bf16 = state.parts["unet"]
                int8.part = CompiledPart("unet", self.core(), int8.folder / "model.xml", self.precision, True,
                                         int8.bytes_after, bf16.on_compiled)  # fmt: skip
            return int8.part

    def _decoder_part(self, state: OpenVINOState) -> CompiledPart:
        """The int8 VAE decoder where it was calibrated, chosen, and the int8 UNet serves; else the IR as converted."""
        bf16, int8 = state.parts["vae_decoder"], state.int8
        if int8 is None or int8.part is None or state.unet_part is not int8.part:
            return bf16
        with int8.lock:
            if int8.decoder_state != "ready" or int8.decoder_folder is None:
                return bf16
            if int8.decoder_part is None:
                int8.decoder_part = CompiledPart("vae_decoder", self.core(), int8.decoder_folder / "model.xml",
                                                 self.precision, False, int8.decoder_bytes, bf16.on_compiled)  # fmt: skip
            return int8.decoder_part

    def _calibrate_after(self, model: "LoadedModel", int8: Int8Activations, unet: Any, run: BackendRun) -> None:
        with int8.lock:
            if int8.state != "calibrating":
                return
            if len(int8.captured) < openvino_int8.MIN_CAPTURED:
                int8.reason = (f"calibrating: {len(int8.captured)} of the {openvino_int8.MIN_CAPTURED} UNet inputs "
                               "int8 calibration needs are kept; later requests add theirs")  # fmt: skip
            else:
                from ..device import probe

                try:
                    free = probe("cpu").free_memory_bytes
                    scheduler = {"class": type(model.base.scheduler).__name__, "config": dict(model.scheduler_config)}
                    decoder = "vae_decoder" in self.state(model).parts  # OpenVINO serves it: it is quantized too
                    openvino_int8.start(int8, unet, sdxl=model.family.family.value == "sdxl", bf16_ir=self.ir_dir(model, "unet"),
                                        precision=self.precision, free_memory=free, scheduler=scheduler,
                                        vae=model.base.vae if decoder else None,
                                        decoder_ir=self.ir_dir(model, "vae_decoder") if decoder else None)  # fmt: skip
                except Exception as exc:  # saving the UNet can fail (disk full); bf16 keeps serving
                    int8.fail(f"{type(exc).__name__}: {exc}")
            run.quantization = int8.as_dict()

    def quantization_info(self, model: "LoadedModel") -> dict[str, Any] | None:
        state = model.backend_state.get(self.id)
        return state.int8.as_dict() if state is not None and state.int8 is not None else None

    def state(self, model: "LoadedModel") -> OpenVINOState:
        states = model.backend_state
        if self.id not in states:
            states[self.id] = OpenVINOState()
        return states[self.id]

    def state_bytes(self, model: "LoadedModel") -> int:
        state = model.backend_state.get(self.id)
        return state.bytes if state is not None else 0

    def describe(self) -> dict[str, Any]:
        return {"id": self.id, "cache_dir": str(self.root), "inference_precision": self.precision,
                "int8_activations": self.int8_activations.value, "int8_activations_reason": self.int8_activations.reason}  # fmt: skip

    # ----- conversion and the disk cache -----

    def core(self) -> Any:
        if self._core is None:
            import openvino as ov

            self._core = ov.Core()
            compiled = self.root / "compiled"
            compiled.mkdir(parents=True, exist_ok=True)
            # OpenVINO keys its compiled-blob cache by the model and the compile options itself.
            self._core.set_property({"CACHE_DIR": str(compiled)})
        return self._core

    def ir_dir(self, model: "LoadedModel", component: str) -> Path:
        return self.root / ir_key(model, component)

    def _load_part(self, model: "LoadedModel", component: str, progress: "Progress | None" = None) -> CompiledPart:
        folder = self.ir_dir(model, component)
        weights = ir_weights(model, component)
        xml = folder / "model.xml"
        if not xml.is_file():
            if progress is not None:
                progress(
                    f"OpenVINO: converting the {component} of {model.source.name} (first use of this model: "
                    "~20 s for SD 1.5, ~1 min for SDXL on a 2-core CPU; saved for later loads)"
                )
            self._convert(model, component, folder, weights)
            if progress is not None:
                progress(f"OpenVINO: converted the {component} of {model.source.name}")

        def on_compiled(part: str, shape_text: str, seconds: float) -> None:
            log.info("OpenVINO %s of %s compiled%s in %.1f s", part, model.source.name, f" for {shape_text}" if shape_text else "", seconds)
            model.backend_events.append(
                {"event": "compiled", "backend": self.id, "component": part, "seconds": round(seconds, 2), "shape": shape_text}
            )

        size = sum(f.stat().st_size for f in folder.glob("*.bin"))
        if weights is not None:
            model.backend_quantization.bytes_after = size  # the estimate made at load, replaced by the IR's real size
        return CompiledPart(component, self.core(), xml, self.precision, component in ("unet", SHALLOW), size, on_compiled)

    def _convert(self, model: "LoadedModel", component: str, folder: Path, weights: str | None = None) -> None:
        log.info(
            "converting the %s of %s to OpenVINO (first use of this model: ~20 s for SD 1.5, ~1 min for SDXL on a "
            "2-core CPU; saved to %s so later loads take seconds)",
            component, model.source.name, folder,
        )
        pipe = model.base
        if component == "vae_decoder":
            traceable = traceable_decoder(pipe.vae)
        elif component == SHALLOW:
            traceable = traceable_shallow(pipe.unet, sdxl=model.family.family.value == "sdxl")
        else:
            traceable = traceable_unet(pipe.unet, sdxl=model.family.family.value == "sdxl")
        meta = {"model": str(model.source.key), "component": component, "key": ir_key_material(model, component)}
        seconds = convert_to_ir(*traceable, folder, meta=meta, weights=weights)
        log.info("converted the %s of %s to OpenVINO in %.1f s", component, model.source.name, seconds)
        model.backend_events.append(
            {"event": "converted", "backend": self.id, "component": component, "seconds": round(seconds, 2), "ir": str(folder / "model.xml")}
        )


# ----- conversion, shared with benchmarks/unet_step.py so it measures what the engine runs -----


def traceable_unet(unet: torch.nn.Module, *, sdxl: bool) -> tuple[torch.nn.Module, dict[str, torch.Tensor], list]:
    """The UNet as a module of tensors only, an example input, and the IR's dynamic input shapes."""
    import openvino as ov

    f32 = ov.Type.f32
    config = unet.config
    context = config.cross_attention_dim
    example = {
        "sample": torch.randn(2, config.in_channels, _TRACE_LATENT, _TRACE_LATENT),
        "timestep": torch.tensor([500.0]),
        "encoder_hidden_states": torch.randn(2, _TRACE_TOKENS, context),
    }
    inputs = [
        ("sample", ov.PartialShape([-1, config.in_channels, -1, -1]), f32),
        ("timestep", ov.PartialShape([1]), f32),
        ("encoder_hidden_states", ov.PartialShape([-1, -1, context]), f32),
    ]
    if not sdxl:
        return _UNetForTrace(unet), example, inputs
    pooled = unet.add_embedding.linear_1.in_features - 6 * config.addition_time_embed_dim
    example.update(text_embeds=torch.randn(2, pooled), time_ids=torch.randn(2, 6))
    inputs += [("text_embeds", ov.PartialShape([-1, pooled]), f32), ("time_ids", ov.PartialShape([-1, 6]), f32)]
    return _SDXLUNetForTrace(unet), example, inputs


def traceable_shallow(unet: torch.nn.Module, *, sdxl: bool) -> tuple[torch.nn.Module, dict[str, torch.Tensor], list]:
    """The UNet's shallow path on a given deep feature (openvino_deep_cache.py), like traceable_unet."""
    import openvino as ov

    _, example, inputs = traceable_unet(unet, sdxl=sdxl)
    channels = deep_channels(unet.config)
    # ShallowUNet's arguments in order: the three of every UNet, deep, then SDXL's two.
    example = {**dict(list(example.items())[:3]), "deep": torch.randn(2, channels, _TRACE_LATENT, _TRACE_LATENT),
               **dict(list(example.items())[3:])}  # fmt: skip
    inputs = [*inputs[:3], ("deep", ov.PartialShape([-1, channels, -1, -1]), ov.Type.f32), *inputs[3:]]
    return ShallowUNet(unet, sdxl=sdxl), example, inputs


def deep_channels(unet_config: Any) -> int:
    """Channels of up_blocks[-2]'s output: the second level's width (the up path mirrors the down path)."""
    return int(unet_config.block_out_channels[1])


def traceable_decoder(vae: torch.nn.Module) -> tuple[torch.nn.Module, dict[str, torch.Tensor], list]:
    """`vae.decoder` (after post_quant_conv, before any tiling) as a module of tensors only, likewise."""
    import openvino as ov

    channels = vae.config.latent_channels
    example = {"latents": torch.randn(1, channels, _TRACE_LATENT, _TRACE_LATENT)}
    return _DecoderForTrace(vae.decoder), example, [("latents", ov.PartialShape([-1, channels, -1, -1]), ov.Type.f32)]


# Weight methods the converted IR can be written with (engine/quantize.py's backend="openvino" methods).
IR_WEIGHT_METHODS = ("nncf_int8",)


def compress_weights(ov_model: Any, method: str) -> Any:
    """`ov_model` with int8 weights (nncf weight compression: one scale and zero point per output channel).

    Weight-only: activations stay in the inference precision and each layer dequantizes its weights as it runs,
    so it halves the bf16 weights in memory and on disk, and runs slower than bf16 (benchmarks/int8_cpu.py).
    """
    import nncf

    if method not in IR_WEIGHT_METHODS:
        raise ValueError(f"unknown OpenVINO weight method {method!r}; known: {', '.join(IR_WEIGHT_METHODS)}")
    # Asymmetric (a zero point per channel) follows skewed weight ranges more closely than symmetric, at no cost in speed.
    return nncf.compress_weights(ov_model, mode=nncf.CompressWeightsMode.INT8_ASYM)


def convert_to_ir(
    module: torch.nn.Module,
    example: dict[str, torch.Tensor],
    inputs: list,
    folder: Path,
    *,
    meta: dict[str, Any] | None = None,
    weights: str | None = None,
) -> float:
    """Trace and convert `module` (its weights compressed by `weights`, an IR_WEIGHT_METHODS id), write
    `folder/model.xml` (+ .bin) atomically; returns the seconds it took."""
    started = time.perf_counter()
    ov_model = convert_module(module, example, inputs)
    if weights is not None:
        ov_model = compress_weights(ov_model, weights)
    return save_ir(ov_model, folder, started, meta={**(meta or {}), **({"weights": weights} if weights else {})})


def convert_module(module: torch.nn.Module, example: dict[str, torch.Tensor], inputs: list) -> Any:
    """`module` traced on `example` and converted to an OpenVINO model with `inputs`' names and dynamic shapes."""
    import openvino as ov
    from openvino.frontend.pytorch.ts_decoder import TorchScriptPythonDecoder

    with torch.inference_mode(False), torch.no_grad():
        # check_trace would run the module twice more only to compare the outputs.
        decoder = TorchScriptPythonDecoder(module, example_input=example, trace_kwargs={"check_trace": False})
        ov_model = ov.convert_model(decoder, input=inputs)
    for output, name in zip(ov_model.outputs, ("out", "deep")):
        output.get_tensor().set_names({name})
    return ov_model


def compress_ir(source: Path, folder: Path, method: str) -> float:
    """The IR in `source` with its weights compressed by `method`, written to `folder`; returns the seconds it took."""
    import openvino as ov

    started = time.perf_counter()
    ov_model = compress_weights(ov.Core().read_model(str(source / "model.xml")), method)
    return save_ir(ov_model, folder, started, meta={"weights": method, "from": str(source)})


def save_ir(ov_model: Any, folder: Path, started: float, *, meta: dict[str, Any]) -> float:
    """Write `ov_model` to `folder/model.xml` atomically, with meta.json; returns the seconds since `started`."""
    import openvino as ov

    # Write next to the final place and rename, so a crash never leaves a half-written IR that looks complete.
    staging = folder.with_name(f"{folder.name}.partial-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    # Keep the module's own precision: bf16 weights stay bf16 (fp16 compression would lose bf16's range).
    ov.save_model(ov_model, str(staging / "model.xml"), compress_to_fp16=False)
    del ov_model
    seconds = time.perf_counter() - started
    (staging / "meta.json").write_text(json.dumps({**meta, "convert_seconds": round(seconds, 2)}, indent=2))
    try:
        staging.rename(folder)
    except OSError:
        # Another process finished the same conversion first; its IR is as good as ours.
        shutil.rmtree(staging, ignore_errors=True)
    return seconds


def compile_options(precision: str) -> dict[str, str]:
    """bf16 where the CPU has it natively; LATENCY: one request at a time uses every core."""
    return {"INFERENCE_PRECISION_HINT": precision, "PERFORMANCE_HINT": "LATENCY"}


def ir_weights(model: "LoadedModel", component: str) -> str | None:
    """The IR_WEIGHT_METHODS id this component's IR is written with (the UNet under nncf_int8); None: as loaded."""
    report = model.backend_quantization
    if component != "unet" or report is None or report.method not in IR_WEIGHT_METHODS:
        return None
    return report.method


def ir_key_material(model: "LoadedModel", component: str) -> dict[str, Any]:
    """Everything an IR depends on: the weights' files (path, size, mtime), dtype, weight compression, and the
    converting software."""
    import diffusers
    import openvino

    source_path = Path(model.source.key)
    if source_path.is_dir():
        folder = "vae" if component == "vae_decoder" else "unet"
        files = sorted(p for p in (source_path / folder).glob("*") if p.is_file())
    else:
        files = [source_path] if source_path.exists() else []
    return {
        "source": model.source.key,
        "component": component,
        "files": [[p.name, p.stat().st_size, p.stat().st_mtime_ns] for p in files],
        "dtype": str(model.dtype),
        # Only compressed IRs carry it, so the keys of IRs written before it existed stay valid.
        **({"weights": weights} if (weights := ir_weights(model, component)) else {}),
        "converter": CONVERTER_VERSION,
        "openvino": openvino.__version__,
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
    }


def ir_key(model: "LoadedModel", component: str) -> str:
    material = json.dumps(ir_key_material(model, component), sort_keys=True)
    return f"{component}-{hashlib.sha256(material.encode()).hexdigest()[:20]}"
