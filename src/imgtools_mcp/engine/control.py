"""ControlNet: which weights serve each family x control type, finding and loading them, and the pipeline call with them.

A run makes the control maps (images/control_maps.py) and passes them in `EngineRequest.extra["control"]`
as a list of ControlInput; the engine checks them with `check_controls` and runs them with `control_call`.
The ControlNet pipelines are built with `from_pipe`, so they share the loaded model's weights.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PIL import Image

from .errors import InvalidRequestError

if TYPE_CHECKING:
    from .cache import LoadedModel
    from .families import FamilyInfo
    from .request import ResolvedJob

log = logging.getLogger(__name__)

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*/[\w.\-]+$")

# Default weights per (family id, control type): the ones SD.Next and A1111 users reach for first.
DEFAULT_CONTROLNETS: dict[tuple[str, str], str] = {
    ("sd1", "canny"): "lllyasviel/control_v11p_sd15_canny",
    ("sd1", "depth"): "lllyasviel/control_v11f1p_sd15_depth",
    ("sd1", "pose"): "lllyasviel/control_v11p_sd15_openpose",
    ("sd1", "lineart"): "lllyasviel/control_v11p_sd15_lineart",
    ("sd1", "scribble"): "lllyasviel/control_v11p_sd15_scribble",
    ("sd1", "tile"): "lllyasviel/control_v11f1e_sd15_tile",
    ("sdxl", "canny"): "diffusers/controlnet-canny-sdxl-1.0",
    ("sdxl", "depth"): "diffusers/controlnet-depth-sdxl-1.0",
    ("sdxl", "pose"): "thibaud/controlnet-openpose-sdxl-1.0",
    ("sdxl", "scribble"): "xinsir/controlnet-scribble-sdxl-1.0",
    ("sdxl", "tile"): "xinsir/controlnet-tile-sdxl-1.0",
    ("flux", "canny"): "InstantX/FLUX.1-dev-Controlnet-Canny",
    ("flux", "depth"): "Shakker-Labs/FLUX.1-dev-ControlNet-Depth",
}

# diffusers pipeline classes per family id and mode.
_PIPELINES: dict[str, dict[str, str]] = {
    "sd1": {
        "txt2img": "StableDiffusionControlNetPipeline",
        "img2img": "StableDiffusionControlNetImg2ImgPipeline",
        "inpaint": "StableDiffusionControlNetInpaintPipeline",
    },
    "sdxl": {
        "txt2img": "StableDiffusionXLControlNetPipeline",
        "img2img": "StableDiffusionXLControlNetImg2ImgPipeline",
        "inpaint": "StableDiffusionXLControlNetInpaintPipeline",
    },
}
_PIPELINES["sd2"] = _PIPELINES["sd1"]
_PIPELINES["flux"] = {
    "txt2img": "FluxControlNetPipeline",
    "img2img": "FluxControlNetImg2ImgPipeline",
    "inpaint": "FluxControlNetInpaintPipeline",
}
# The ControlNet classes (one, several) per family; SD 1.x/2.x/SDXL share diffusers' ControlNetModel.
_NETS: dict[str, tuple[str, str]] = {"flux": ("FluxControlNetModel", "FluxMultiControlNetModel")}
_SD_NETS = ("ControlNetModel", "MultiControlNetModel")


@dataclass(frozen=True)
class ControlInput:
    """One ControlNet for a request: the map already made, how strongly and over which part of the denoising it acts."""

    type: str
    image: Image.Image
    weight: float = 1.0
    start: float = 0.0
    end: float = 1.0
    model: str | None = None  # ControlNet weights: a folder, a name in IMGTOOLS_CONTROLNET_DIRS or a hub id


@dataclass(frozen=True)
class ControlNetSource:
    spec: str
    path: Path | None  # None: a hub id not yet downloaded
    name: str

    @property
    def key(self) -> str:
        return str(self.path) if self.path else self.spec


def supported_pairs() -> list[str]:
    pairs = sorted(f"{family}:{kind}" for family, kind in DEFAULT_CONTROLNETS)
    return pairs + ["sd1/sd2/sdxl/flux:image (with model)"]


def resolve_controlnet(
    spec: str | None, family_id: str, kind: str, *, dirs: list[Path], offline: bool, param: str
) -> ControlNetSource:
    """A ControlNet folder: the request's `model`, else the registry's default found in the folders or the hub cache."""
    if spec is None:
        spec = DEFAULT_CONTROLNETS.get((family_id, kind))
        if spec is None:
            if kind == "image":
                raise InvalidRequestError(f"{param}.model", "type 'image' needs the ControlNet the map is for (a folder, name or hub id)")
            raise InvalidRequestError(
                f"{param}.type", f"no ControlNet for {kind!r} on {family_id} models; supported: {', '.join(supported_pairs())}"
            )
    name = spec.rstrip("/").rsplit("/", 1)[-1]
    candidates = [Path(spec).expanduser()] + [Path(d).expanduser() / spec for d in dirs] + [Path(d).expanduser() / name for d in dirs]
    for path in candidates:
        if path.is_dir() and (path / "config.json").is_file():
            return ControlNetSource(spec, path.resolve(), path.name)
    if not _HUB_ID.match(spec):
        raise InvalidRequestError(
            f"{param}.model", f"{spec!r} is not a ControlNet folder (with config.json), a name in IMGTOOLS_CONTROLNET_DIRS or a hub id"
        )
    from .loader import _hub_cache_snapshot

    cached = _hub_cache_snapshot(spec)
    if cached is not None and (cached / "config.json").is_file():
        return ControlNetSource(spec, cached, name)
    if offline:
        raise InvalidRequestError(
            f"{param}.model",
            f"the ControlNet {spec!r} is not in IMGTOOLS_CONTROLNET_DIRS or the HuggingFace cache and offline mode is on; "
            f"run `hf download {spec}` where the hub is reachable, or put its folder in IMGTOOLS_CONTROLNET_DIRS",
        )
    return ControlNetSource(spec, None, name)


def check_controls(
    controls: Any, family: "FamilyInfo", *, dirs: list[Path], offline: bool, param: str = "control"
) -> list[ControlNetSource]:
    """Refuse what cannot run before anything loads: wrong shapes, unsupported family x type, missing weights."""
    if not isinstance(controls, list) or not all(isinstance(c, ControlInput) for c in controls):
        raise InvalidRequestError(param, "must be a list of ControlInput")
    family_id = family.family.id
    if family_id not in _PIPELINES:
        raise InvalidRequestError(
            param, f"ControlNet is not available for {family.family.label} models here; supported: {', '.join(supported_pairs())}"
        )
    sources = []
    for index, control in enumerate(controls):
        where = f"{param}[{index}]"
        if not 0 <= control.start < control.end <= 1:
            raise InvalidRequestError(f"{where}.start", f"start and end are fractions of the steps with 0 <= start < end <= 1 (got {control.start:g}, {control.end:g})")
        sources.append(resolve_controlnet(control.model, family_id, control.type, dirs=dirs, offline=offline, param=where))
    return sources


def _load_controlnet(model: "LoadedModel", source: ControlNetSource) -> Any:
    """The ControlNet on the model's device and dtype, kept with the model (evicted with it)."""
    key = f"controlnet:{source.key}"
    if key not in model.variants:
        import diffusers

        where = str(source.path) if source.path is not None else source.spec
        net_class = getattr(diffusers, _NETS.get(model.family.family.id, _SD_NETS)[0])
        controlnet = net_class.from_pretrained(where, torch_dtype=model.dtype)
        # Offload hooks belong to the base pipeline's modules; the ControlNet simply lives on the execution device.
        device = getattr(model.base, "_execution_device", None) or model.device
        model.variants[key] = controlnet.to(device).eval()
    return model.variants[key]


def from_pipe_keeping_dtypes(cls: Any, base: Any, **components: Any) -> Any:
    """`cls.from_pipe(base, ...)` without its side effect on the shared weights.

    diffusers' from_pipe casts every module of the new pipeline to its `dtype` argument, float32 when none is
    given, and those modules are the loaded model's own: a bf16 model would silently become float32 (twice the
    memory, and other numbers for the next plain request), and a VAE kept in float32 beside an fp16 UNet would
    be cast too. Each module's dtype is put back as it was.
    """
    import torch

    def dtypes(modules: dict[str, Any]) -> dict[str, Any]:
        return {name: module.dtype for name, module in modules.items() if isinstance(module, torch.nn.Module)}

    before = {**dtypes(base.components), **dtypes(components)}
    denoiser = base.components.get("unet") or base.components.get("transformer")
    pipe = cls.from_pipe(base, dtype=getattr(denoiser, "dtype", None), **components)
    for name, module in pipe.components.items():
        if isinstance(module, torch.nn.Module) and name in before and module.dtype != before[name]:
            module.to(dtype=before[name])
    return pipe


def control_call(model: "LoadedModel", job: "ResolvedJob", pipe: Any, kwargs: dict[str, Any], sources: list[ControlNetSource]) -> tuple[Any, dict[str, Any]]:
    """The ControlNet pipeline for this job's mode (sharing the model's weights) and the call's extra arguments."""
    import diffusers

    family_id = job.family.family.id
    controls: list[ControlInput] = job.request.extra["control"]
    nets = [_load_controlnet(model, source) for source in sources]
    denoiser = model.base.components.get("unet") or model.base.components.get("transformer")
    denoiser_dtype = getattr(denoiser, "dtype", None)
    for net in nets:
        if denoiser_dtype is not None and net.dtype != denoiser_dtype:
            net.to(dtype=denoiser_dtype)  # the ControlNet's residuals are added to the denoiser's, in its dtype
    key = f"control:{job.mode}:" + "|".join(source.key for source in sources)
    if key not in model.variants:
        cls = getattr(diffusers, _PIPELINES[family_id][job.mode])
        controlnet = nets[0] if len(nets) == 1 else getattr(diffusers, _NETS.get(family_id, _SD_NETS)[1])(nets)
        variant = from_pipe_keeping_dtypes(cls, model.base, controlnet=controlnet)
        variant.set_progress_bar_config(disable=True)
        model.variants[key] = variant
    control_pipe = model.variants[key]
    control_pipe.scheduler = pipe.scheduler  # the sampler this request chose
    maps = [c.image.convert("RGB").resize((job.width, job.height), Image.Resampling.LANCZOS) for c in controls]
    single = len(controls) == 1
    extra: dict[str, Any] = {
        "controlnet_conditioning_scale": controls[0].weight if single else [c.weight for c in controls],
        "control_guidance_start": controls[0].start if single else [c.start for c in controls],
        "control_guidance_end": controls[0].end if single else [c.end for c in controls],
    }
    # SD's text-to-image ControlNet pipelines take the map as `image`; their img2img/inpaint keep `image` for the
    # picture, and FLUX's take `control_image` in every mode.
    map_kwarg = "image" if job.mode == "txt2img" and family_id not in _NETS else "control_image"
    extra[map_kwarg] = maps[0] if single else maps
    if job.mode == "txt2img":
        extra.update(width=job.width, height=job.height)
    if family_id == "flux" and job.mode == "txt2img":
        # FLUX's ControlNet pipelines VAE-encode the map by sampling with the request's generators before they draw
        # the starting noise, so one seed would start from other noise than without control; it is drawn here first.
        extra["latents"], _ = control_pipe.prepare_latents(
            len(job.seeds), denoiser.config.in_channels // 4, job.height, job.width, denoiser.dtype,
            control_pipe._execution_device, kwargs["generator"],
        )
    return control_pipe, {**kwargs, **extra}


def describe_controls(controls: list[ControlInput], sources: list[ControlNetSource]) -> list[dict[str, Any]]:
    return [
        {"type": c.type, "weight": c.weight, "start": c.start, "end": c.end, "model": s.spec, "name": s.name}
        for c, s in zip(controls, sources, strict=True)
    ]
