"""ControlNet: finding the weights for each entry (engine/control_registry.py says which serve a family), loading
them, and the pipeline call with them.

A run makes the control maps (images/control_maps.py) and passes them in `EngineRequest.extra["control"]`
as a list of ControlInput; the engine checks them with `check_controls` and runs them with `control_call`.
The ControlNet pipelines are built with `from_pipe`, so they share the loaded model's weights.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PIL import Image

from .control_registry import CONTROLNETS, MODE_LABELS, supported_pairs
from .errors import InvalidRequestError
from .pipes import from_pipe_keeping_dtypes

if TYPE_CHECKING:
    from .cache import LoadedModel
    from .families import FamilyInfo
    from .request import ResolvedJob

log = logging.getLogger(__name__)

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*/[\w.\-]+$")
UNION = "union"  # `model: "union"`: the family's union ControlNet, with the control mode of the entry's type


@dataclass(frozen=True)
class ControlInput:
    """One ControlNet for a request: the map already made, how strongly and over which part of the denoising it acts."""

    type: str
    image: Image.Image
    weight: float = 1.0
    start: float = 0.0
    end: float = 1.0
    model: str | None = None  # ControlNet weights: a folder, a name in IMGTOOLS_CONTROLNET_DIRS, a hub id or "union"


@dataclass(frozen=True)
class ControlNetSource:
    spec: str
    path: Path | None  # None: a hub id not yet downloaded
    name: str
    union: bool = False
    mode: int | None = None  # the union's control_mode for this entry's type; None for one-type ControlNets

    @property
    def key(self) -> str:
        return str(self.path) if self.path else self.spec

    def describe(self) -> dict[str, Any]:
        """What the result and infotext record about the ControlNet an entry ran with."""
        return {"controlnet": self.name, "controlnet_model": self.spec, "union": self.union, "control_mode": self.mode}


def _unsupported(param: str, message: str) -> InvalidRequestError:
    return InvalidRequestError(param, f"{message}; supported: {'; '.join(supported_pairs())}")


def _union_config(path: Path | None) -> tuple[bool, int | None]:
    """Whether a ControlNet folder holds a union ControlNet, and how many control modes it has."""
    if path is None:
        return False, None
    try:
        config = json.loads((path / "config.json").read_text())
    except (OSError, ValueError):
        return False, None
    if config.get("_class_name") == "ControlNetUnionModel":
        return True, config.get("num_control_type", 6)
    if config.get("num_mode") is not None:  # FLUX.1 union: FluxControlNetModel with a mode embedding
        return True, config["num_mode"]
    return False, None


def _locate(spec: str, dirs: list[Path], offline: bool, param: str, single_file: str | None = None) -> tuple[Path | None, str]:
    """A diffusers ControlNet folder (with config.json), or for a ControlNet published as one file (`single_file`,
    or a .safetensors path given as model) that file, in a folder of its own name or the hub cache."""
    name = spec.rstrip("/").rsplit("/", 1)[-1]
    candidates = [Path(spec).expanduser()] + [Path(d).expanduser() / spec for d in dirs] + [Path(d).expanduser() / name for d in dirs]
    for path in candidates:
        if path.is_dir() and (path / "config.json").is_file():
            return path.resolve(), path.name
        if single_file and path.is_dir() and (path / single_file).is_file():
            return (path / single_file).resolve(), path.name
        if path.is_file() and path.suffix == ".safetensors":
            return path.resolve(), path.stem
    if not _HUB_ID.match(spec):
        raise InvalidRequestError(
            f"{param}.model", f"{spec!r} is not a ControlNet folder (with config.json), a name in IMGTOOLS_CONTROLNET_DIRS or a hub id"
        )
    from .loader import _hub_cache_snapshot

    cached = _hub_cache_snapshot(spec)
    if cached is not None and (cached / "config.json").is_file():
        return cached, name
    if cached is not None and single_file and (cached / single_file).is_file():
        return cached / single_file, name
    if offline:
        raise InvalidRequestError(
            f"{param}.model",
            f"the ControlNet {spec!r} is not in IMGTOOLS_CONTROLNET_DIRS or the HuggingFace cache and offline mode is on; "
            f"run `hf download {spec}` where the hub is reachable, or put its folder in IMGTOOLS_CONTROLNET_DIRS",
        )
    return None, name


def resolve_controlnet(
    spec: str | None, family_id: str, kind: str, *, dirs: list[Path], offline: bool, param: str, prefer_union: bool = False
) -> ControlNetSource:
    """The entry's ControlNet: its `model`, else the family's one-type ControlNet for the type, else the family's union.

    `model: "union"` (or `prefer_union` without a model) picks the family's union ControlNet, and a folder whose config
    is a union ControlNet runs as one; a union gets the control mode of the entry's type from the registry.
    """
    table = CONTROLNETS[family_id]
    wants_union = spec == UNION or (spec is None and (table.union_only(kind) or (prefer_union and kind in table.union_modes)))
    if spec is None or spec == UNION:
        if wants_union and table.union is None:
            raise _unsupported(f"{param}.model", f"{family_id} models have no union ControlNet here")
        spec = table.union if wants_union else table.dedicated.get(kind)
        if spec is None:
            if kind == "image":
                raise InvalidRequestError(f"{param}.model", "type 'image' needs the ControlNet the map is for (a folder, name or hub id)")
            raise _unsupported(f"{param}.type", f"no ControlNet for {kind!r} on {family_id} models")
    path, name = _locate(spec, dirs, offline, param, table.single_files.get(spec))
    is_union, modes = _union_config(path)
    if not (wants_union or is_union or spec == table.union):
        return ControlNetSource(spec, path, name)
    if kind == "image" and table.union_modes and all(mode is None for mode in table.union_modes.values()):
        return ControlNetSource(spec, path, name, union=True)  # a union without modes reads the kind from the map
    if kind not in table.union_modes:
        known = ", ".join(table.union_modes) or "none"
        if kind == "image" and table.union_modes:
            raise InvalidRequestError(
                f"{param}.type", f"the union ControlNet {name} needs the map's type to pick its control mode ({known}); 'image' gives none"
            )
        raise _unsupported(f"{param}.type", f"the union ControlNet {name} on {family_id} models serves {known}, not {kind!r}")
    mode = table.union_modes[kind]
    if mode is not None and modes is not None and mode >= modes:
        raise InvalidRequestError(
            f"{param}.type",
            f"{kind!r} is control mode {mode} but the union ControlNet {name} has {modes} modes (0-{modes - 1}); "
            "use union weights that have it (e.g. ProMax) or a one-type ControlNet as model",
        )
    return ControlNetSource(spec, path, name, union=True, mode=mode)


def check_controls(
    controls: Any, family: "FamilyInfo", *, dirs: list[Path], offline: bool, mode: str | None = None, param: str = "control"
) -> list[ControlNetSource]:
    """Refuse what cannot run before anything loads: wrong shapes, unsupported family x type x mode, missing weights."""
    if not isinstance(controls, list) or not all(isinstance(c, ControlInput) for c in controls):
        raise InvalidRequestError(param, "must be a list of ControlInput")
    family_id = family.family.id
    label = family.family.label
    table = CONTROLNETS.get(family_id)
    if table is None:
        raise _unsupported(param, f"ControlNet is not available for {label} models here")
    if mode is not None and mode not in table.pipelines:
        runs = "/".join(MODE_LABELS[m] for m in table.pipelines)
        raise _unsupported(param, f"ControlNet on {label} models runs on {runs} only (diffusers has no {MODE_LABELS.get(mode, mode)} pipeline for it)")
    for index, control in enumerate(controls):
        where = f"{param}[{index}]"
        if not 0 <= control.start < control.end <= 1:
            raise InvalidRequestError(f"{where}.start", f"start and end are fractions of the steps with 0 <= start < end <= 1 (got {control.start:g}, {control.end:g})")
        if not table.windows and (control.start, control.end) != (0.0, 1.0):
            raise InvalidRequestError(f"{where}.start", f"{label} ControlNets act on every step; leave start 0 and end 1")
    if table.max_controls is not None and len(controls) > table.max_controls:
        raise InvalidRequestError(param, f"{label} runs {table.max_controls} ControlNet entry per request (diffusers' pipeline takes one)")
    # Entries with a model (or only a union for their type) first: where union and one-type ControlNets run in separate
    # pipelines (SDXL), one union among them sends the entries without a model to the union as well.
    resolved: dict[int, ControlNetSource] = {}
    deferred = []
    for index, control in enumerate(controls):
        if table.union_pipelines is not None and control.model is None and not table.union_only(control.type) and control.type in table.union_modes:
            deferred.append(index)
            continue
        resolved[index] = resolve_controlnet(control.model, family_id, control.type, dirs=dirs, offline=offline, param=f"{param}[{index}]")
    to_union = any(s.union for s in resolved.values())
    for index in deferred:
        resolved[index] = resolve_controlnet(
            None, family_id, controls[index].type, dirs=dirs, offline=offline, param=f"{param}[{index}]", prefer_union=to_union
        )
    sources = [resolved[index] for index in range(len(controls))]
    if table.union_pipelines is not None and any(s.union for s in sources) and not all(s.union for s in sources):
        index = next(i for i, s in enumerate(sources) if not s.union)
        raise InvalidRequestError(
            f"{param}[{index}].model",
            f"{label} runs union and one-type ControlNets in separate pipelines; give every entry a union model "
            "('union' or a union folder), or none a union one",
        )
    return sources


def _load_controlnet(model: "LoadedModel", source: ControlNetSource) -> Any:
    """The ControlNet on the model's device and dtype, kept with the model (evicted with it)."""
    key = f"controlnet:{source.key}"
    if key not in model.variants:
        import diffusers

        table = CONTROLNETS[model.family.family.id]
        where = str(source.path) if source.path is not None else source.spec
        net_class = getattr(diffusers, table.union_net if source.union and table.union_net else table.net)
        if source.path is not None and source.path.is_file():  # one weights file (diffusers maps its keys)
            controlnet = net_class.from_single_file(where, torch_dtype=model.dtype)
        elif source.path is None and source.spec in table.single_files:
            from huggingface_hub import hf_hub_download

            weights = hf_hub_download(source.spec, table.single_files[source.spec])
            controlnet = net_class.from_single_file(weights, torch_dtype=model.dtype)
        else:
            controlnet = net_class.from_pretrained(where, torch_dtype=model.dtype)
        # Offload hooks belong to the base pipeline's modules; the ControlNet simply lives on the execution device.
        device = getattr(model.base, "_execution_device", None) or model.device
        model.variants[key] = controlnet.to(device).eval()
    return model.variants[key]


def _diffusers_class(name: str) -> Any:
    import diffusers
    import diffusers.models

    return getattr(diffusers, name, None) or getattr(diffusers.models, name)  # MultiControlNetUnionModel: models only


def _combined(family_id: str, nets: list[Any], sources: list[ControlNetSource]) -> tuple[Any, str]:
    """The ControlNet the pipeline gets: one, or several in the family's multi class, and a key for that shape.

    Several entries on one FLUX.1 union run as diffusers' multi-input union (the weights held once, each entry with its
    own map, mode, weight and window). SDXL's union takes several maps in one pass but scales them inside its fuser,
    so weight 0 would not switch an entry off; there each entry runs as its own net (the same weights, shared).
    """
    table = CONTROLNETS[family_id]
    union_run = table.union_pipelines is not None and sources[0].union
    if len(nets) == 1:
        return (_diffusers_class(table.union_multi)([nets[0]]) if union_run else nets[0]), "one"
    if family_id == "flux" and all(s.union for s in sources) and len({s.key for s in sources}) == 1:
        return _diffusers_class(table.multi)([nets[0]]), "union-inputs"
    multi = table.union_multi if union_run else table.multi
    assert multi is not None  # check_controls refused more entries than a family without a multi class runs
    return _diffusers_class(multi)(nets), "multi"


def control_call(model: "LoadedModel", job: "ResolvedJob", pipe: Any, kwargs: dict[str, Any], sources: list[ControlNetSource]) -> tuple[Any, dict[str, Any]]:
    """The ControlNet pipeline for this job's mode (sharing the model's weights) and the call's extra arguments."""
    import diffusers

    family_id = job.family.family.id
    table = CONTROLNETS[family_id]
    union_run = table.union_pipelines is not None and sources[0].union
    controls: list[ControlInput] = job.request.extra["control"]
    nets = [_load_controlnet(model, source) for source in sources]
    denoiser = model.base.components.get("unet") or model.base.components.get("transformer")
    denoiser_dtype = getattr(denoiser, "dtype", None)
    for net in nets:
        if denoiser_dtype is not None and net.dtype != denoiser_dtype:
            net.to(dtype=denoiser_dtype)  # the ControlNet's residuals are added to the denoiser's, in its dtype
    controlnet, shape = _combined(family_id, nets, sources)
    key = f"control:{job.mode}:{shape}:" + "|".join(source.key for source in sources)
    if key not in model.variants:
        cls = getattr(diffusers, (table.union_pipelines if union_run else table.pipelines)[job.mode])
        variant = from_pipe_keeping_dtypes(cls, model.base, controlnet=controlnet)
        variant.set_progress_bar_config(disable=True)
        model.variants[key] = variant
    control_pipe = model.variants[key]
    control_pipe.scheduler = pipe.scheduler  # the sampler this request chose
    maps = [c.image.convert("RGB").resize((job.width, job.height), Image.Resampling.LANCZOS) for c in controls]
    # The SDXL union pipeline holds even one union in its multi class, so it takes lists like several entries.
    single = len(controls) == 1 and not union_run
    extra: dict[str, Any] = {"controlnet_conditioning_scale": controls[0].weight if single else [c.weight for c in controls]}
    if table.windows:
        extra["control_guidance_start"] = controls[0].start if single else [c.start for c in controls]
        extra["control_guidance_end"] = controls[0].end if single else [c.end for c in controls]
    if any(s.mode is not None for s in sources):
        extra["control_mode"] = sources[0].mode if single else [s.mode for s in sources]
    # SD's one-type text-to-image ControlNet pipelines take the map as `image`; their img2img/inpaint keep `image` for
    # the picture, and the others take `control_image` in every mode.
    map_kwarg = "image" if job.mode == "txt2img" and table.map_kwarg_txt2img == "image" and not union_run else "control_image"
    extra[map_kwarg] = maps[0] if single else maps
    if job.mode == "txt2img":
        extra.update(width=job.width, height=job.height)
    if table.noise_first and job.mode == "txt2img":
        # FLUX's and Qwen-Image's ControlNet pipelines VAE-encode the map by sampling with the request's generators
        # before they draw the starting noise, so one seed would start from other noise than without control; it is
        # drawn here first.
        drawn = control_pipe.prepare_latents(
            len(job.seeds), denoiser.config.in_channels // 4, job.height, job.width, denoiser.dtype,
            control_pipe._execution_device, kwargs["generator"],
        )
        extra["latents"] = drawn[0] if isinstance(drawn, tuple) else drawn  # FLUX's come with their position ids
    return control_pipe, {**kwargs, **extra}
