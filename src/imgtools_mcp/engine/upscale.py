"""Upscaling: find and load spandrel upscalers (ESRGAN, RealPLKSR, ...), run them in feathered tiles, or Lanczos.

MCP-free. The tool (tools/upscale.py) runs `Upscaler.upscale` inside the engine's device queue and, for
the optional detail pass, img2img over tiles through the engine's public check/generate API.
"""

from __future__ import annotations

import importlib.util
import logging
import math
import re
import sys
import threading
import types
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from PIL import Image

from .errors import EngineError, GenerationCancelled

log = logging.getLogger(__name__)

UPSCALER_SUFFIXES = (".pth", ".pt", ".safetensors", ".ckpt")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*/[\w.\-]+(/[\w.\-/]+)?$")
Box = tuple[int, int, int, int]


class UpscalerError(EngineError):
    """An upscaler that cannot be found or loaded; the message names the `model` parameter and what to do."""


@dataclass(frozen=True)
class UpscalerSource:
    """Where an upscaler's weights are: a file on disk (found directly, in IMGTOOLS_UPSCALER_DIRS or the hub cache)."""

    spec: str
    path: Path
    name: str
    kind: Literal["file", "hub"]


def list_upscalers(dirs: list[Path]) -> list[Path]:
    """Weight files in the upscaler folders (one level deep), for listings and error messages."""
    found: list[Path] = []
    for folder in dirs:
        folder = Path(folder).expanduser()
        if folder.is_dir():
            found += sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in UPSCALER_SUFFIXES)
    return found


def resolve_upscaler(spec: str, *, dirs: list[Path], offline: bool, param: str = "model") -> UpscalerSource:
    """A path, a file name (with or without suffix) in `dirs`, or a hub id `owner/repo[/file.pth]`."""
    spec = spec.strip()
    if not spec:
        raise UpscalerError(f"{param}: empty; give an upscaler file name in IMGTOOLS_UPSCALER_DIRS, a path or a hub id")
    direct = Path(spec).expanduser()
    candidates = [direct] + [Path(d).expanduser() / spec for d in dirs]
    candidates += [Path(d).expanduser() / (spec + suffix) for d in dirs for suffix in UPSCALER_SUFFIXES]
    for path in candidates:
        if path.is_file():
            if path.suffix.lower() not in UPSCALER_SUFFIXES:
                raise UpscalerError(f"{param}: {spec!r} is not a {'/'.join(UPSCALER_SUFFIXES)} weight file")
            return UpscalerSource(spec, path.resolve(), path.stem, "file")
    if _HUB_ID.match(spec) and not direct.is_absolute():
        return UpscalerSource(spec, _hub_file(spec, offline=offline, param=param), spec.rsplit("/", 1)[-1], "hub")
    known = ", ".join(p.stem for p in list_upscalers(dirs)) or "none (IMGTOOLS_UPSCALER_DIRS is empty or has no weights)"
    raise UpscalerError(
        f"{param}: {spec!r} is not an upscaler file, a name in IMGTOOLS_UPSCALER_DIRS or a hub id 'owner/repo[/file.pth]'; "
        f"known: {known}"
    )


def _hub_file(spec: str, *, offline: bool, param: str) -> Path:
    """One weight file of a hub repo, from the cache or (online) downloaded: `owner/repo/file` or a repo with one file."""
    from huggingface_hub import hf_hub_download, snapshot_download

    from .loader import hf_cache_dir

    parts = spec.split("/")
    repo, filename = "/".join(parts[:2]), "/".join(parts[2:]) or None
    try:
        if filename:
            return Path(hf_hub_download(repo, filename, cache_dir=hf_cache_dir(), local_files_only=offline))
        folder = Path(
            snapshot_download(
                repo, cache_dir=hf_cache_dir(), local_files_only=offline, allow_patterns=[f"*{s}" for s in UPSCALER_SUFFIXES]
            )
        )
    except Exception as exc:  # the hub client raises many transport/HTTP/cache types; all mean "not available"
        where = "not in the HuggingFace cache and offline mode is on" if offline else "could not be fetched"
        raise UpscalerError(
            f"{param}: {spec!r} is {where} ({type(exc).__name__}); run `hf download {repo}` where the hub is reachable, "
            "or put the weight file in IMGTOOLS_UPSCALER_DIRS"
        ) from exc
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in UPSCALER_SUFFIXES)
    if len(files) != 1:
        names = ", ".join(p.name for p in files) or "none"
        raise UpscalerError(f"{param}: hub repo {repo!r} has {len(files)} weight files ({names}); name one as '{repo}/<file>'")
    return files[0]


@contextmanager
def _spandrel_importable() -> Iterator[None]:
    """Let spandrel import where torchvision is absent (CPU-only torch: PyPI has no CPU torchvision wheel).

    Only spandrel's LaMa (inpainting) and RestoreFormer (face restoration) architectures use
    torchvision, and only at run time; neither is an upscaler. A placeholder module that raises if
    used stands in during spandrel's import and is removed right after, so nothing else (transformers,
    diffusers) ever sees a torchvision that is not there.
    """
    if "spandrel" in sys.modules or importlib.util.find_spec("torchvision") is not None:
        yield
        return

    def unavailable(*_args: Any, **_kwargs: Any) -> Any:
        raise UpscalerError("model: this architecture needs torchvision, which is not installed")

    functional = types.ModuleType("torchvision.transforms.functional")
    functional.rotate = unavailable  # type: ignore[attr-defined]
    functional.normalize = unavailable  # type: ignore[attr-defined]
    functional.InterpolationMode = types.SimpleNamespace(BILINEAR="bilinear", NEAREST="nearest")  # type: ignore[attr-defined]
    transforms = types.ModuleType("torchvision.transforms")
    transforms.functional = functional  # type: ignore[attr-defined]
    root = types.ModuleType("torchvision")
    root.transforms = transforms  # type: ignore[attr-defined]
    placeholders = {"torchvision": root, "torchvision.transforms": transforms, "torchvision.transforms.functional": functional}
    sys.modules.update(placeholders)
    try:
        yield
    finally:
        for name in placeholders:
            sys.modules.pop(name, None)


def _spandrel() -> Any:
    try:
        with _spandrel_importable():
            import spandrel
    except ImportError as exc:
        raise UpscalerError(
            "model: upscaler models need spandrel (`pip install 'imgtools-mcp[upscale]'`); "
            "without `model` the upscale is Lanczos (plus the optional detail pass)"
        ) from exc
    except RuntimeError as exc:  # a torchvision built for another torch fails while registering its operators
        raise UpscalerError(
            f"model: spandrel could not be imported ({str(exc).splitlines()[0][:120]}); install the torchvision that "
            "matches your torch, or uninstall torchvision"
        ) from exc
    return spandrel


class Upscaler:
    """A loaded spandrel model on a device, run in feathered tiles so any image size fits in memory."""

    def __init__(self, source: UpscalerSource, descriptor: Any, device: str, dtype: torch.dtype) -> None:
        self.source = source
        self.descriptor = descriptor
        self.device = device
        self.dtype = dtype

    @property
    def scale(self) -> int:
        return int(self.descriptor.scale)

    @property
    def architecture(self) -> str:
        arch = self.descriptor.architecture
        return str(getattr(arch, "name", None) or getattr(arch, "id", None) or type(self.descriptor.model).__name__)

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.source.name,
            "spec": self.source.spec,
            "path": str(self.source.path),
            "architecture": self.architecture,
            "native_scale": self.scale,
            "device": self.device,
            "dtype": str(self.dtype).removeprefix("torch."),
        }

    def run_once(
        self, image: Image.Image, *, tile: int, overlap: int, cancel: threading.Event | None = None,
        on_tile: Callable[[int, int], None] | None = None,
    ) -> Image.Image:
        """One pass of the model (its native scale) over feathered tiles of `tile` input pixels."""
        array = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
        scale = self.scale

        def run_tile(crop: np.ndarray) -> np.ndarray:
            if cancel is not None and cancel.is_set():
                raise GenerationCancelled(0)
            # A tile is a strided view of the image; convolutions on a non-contiguous input take a slower path
            # (1.2x measured for a 32 px tile on a CPU), so it is copied out first.
            tensor = torch.from_numpy(np.ascontiguousarray(crop)).permute(2, 0, 1).contiguous()[None].to(self.device, self.dtype)
            with torch.inference_mode():
                out = self.descriptor(tensor)
            return out[0].float().clamp(0, 1).permute(1, 2, 0).cpu().numpy()

        result = blend_tiles(array, run_tile, scale=scale, tile=tile, overlap=overlap, on_tile=on_tile)
        return Image.fromarray(np.round(result * 255.0).clip(0, 255).astype(np.uint8), "RGB")

    def upscale(
        self, image: Image.Image, scale: int, *, tile: int, overlap: int, cancel: threading.Event | None = None
    ) -> tuple[Image.Image, list[str]]:
        """Model passes until the image is at least `scale`x, then Lanczos to exactly `scale`x (A1111 does the same)."""
        target = (image.width * scale, image.height * scale)
        notes: list[str] = []
        passes = max(1, math.ceil(math.log(scale, self.scale))) if self.scale > 1 else 1
        current = image
        for _ in range(passes):
            current = self.run_once(current, tile=tile, overlap=overlap, cancel=cancel)
        if current.size != target:
            notes.append(
                f"{self.source.name} is a {self.scale}x model: ran {passes} pass(es) to {current.width}x{current.height}, "
                f"then Lanczos to {target[0]}x{target[1]}"
            )
            current = current.resize(target, Image.Resampling.LANCZOS)
        return current, notes


def load_upscaler(source: UpscalerSource, device: str, dtype: torch.dtype) -> Upscaler:
    """Load through spandrel (architecture detected from the weights); refuses models that do not enlarge."""
    spandrel = _spandrel()
    try:
        descriptor = spandrel.ModelLoader(device="cpu").load_from_file(str(source.path))
    except Exception as exc:  # spandrel raises UnsupportedModelError, KeyError, RuntimeError... for foreign weights
        raise UpscalerError(
            f"model: {source.name!r} could not be loaded as an upscaler ({type(exc).__name__}: "
            f"{(str(exc).splitlines() or [''])[0][:160]}); spandrel reads ESRGAN/RealESRGAN, 4x-UltraSharp, RealPLKSR, "
            "SwinIR, HAT, DAT and more"
        ) from exc
    if not isinstance(descriptor, spandrel.ImageModelDescriptor) or int(descriptor.scale) < 2:
        kind = getattr(descriptor, "purpose", "restoration")
        raise UpscalerError(
            f"model: {source.name!r} is a {descriptor.architecture.name} {kind} model at scale {descriptor.scale}, not an upscaler"
        )
    # Half precision only where the architecture supports it (spandrel says which); else full precision.
    supported = {torch.float16: descriptor.supports_half, torch.bfloat16: descriptor.supports_bfloat16}
    run_dtype = dtype if supported.get(dtype, dtype == torch.float32) else torch.float32
    descriptor.to(device).eval()
    descriptor.model.to(run_dtype)
    return Upscaler(source, descriptor, device, run_dtype)


def lanczos(image: Image.Image, scale: int) -> Image.Image:
    return image.convert("RGB").resize((image.width * scale, image.height * scale), Image.Resampling.LANCZOS)


# ----- tiling -----


def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Start offsets of tiles of `tile` pixels covering `length`, neighbours overlapping by at least `overlap`.

    Tiles are spread evenly and the last one ends exactly at `length`, so every tile has the full size
    (a model or a denoiser sees the same shape each time) and no strip at the edge is left thin.
    """
    if tile >= length:
        return [0]
    if not 0 <= overlap < tile:
        raise ValueError(f"overlap must be >= 0 and smaller than the tile ({tile}); got {overlap}")
    count = math.ceil((length - overlap) / (tile - overlap))
    return [round(index * (length - tile) / (count - 1)) for index in range(count)]


def tile_boxes(width: int, height: int, tile: int | tuple[int, int], overlap: int) -> list[Box]:
    tile_w, tile_h = (tile, tile) if isinstance(tile, int) else tile
    tile_w, tile_h = min(tile_w, width), min(tile_h, height)
    return [
        (x, y, x + tile_w, y + tile_h)
        for y in tile_starts(height, tile_h, overlap)
        for x in tile_starts(width, tile_w, overlap)
    ]


def feather(box: Box, size: tuple[int, int], ramp: int) -> np.ndarray:
    """Blend weights (h, w) of one tile: ramping up over `ramp` pixels from each edge that lies inside the image."""
    left, top, right, bottom = box
    width, height = size

    def axis(start: int, end: int, length: int) -> np.ndarray:
        weights = np.ones(end - start, dtype=np.float32)
        if ramp <= 0:
            return weights
        ramp_up = (np.arange(end - start, dtype=np.float32) + 0.5) / ramp
        if start > 0:
            weights = np.minimum(weights, ramp_up)
        if end < length:
            weights = np.minimum(weights, ramp_up[::-1])
        return np.clip(weights, 1e-3, 1.0)

    return np.outer(axis(top, bottom, height), axis(left, right, width))


def blend_tiles(
    array: np.ndarray,
    run_tile: Callable[[np.ndarray], np.ndarray],
    *,
    scale: int,
    tile: int,
    overlap: int,
    on_tile: Callable[[int, int], None] | None = None,
) -> np.ndarray:
    """Run `run_tile` (h, w, 3 → h*scale, w*scale, 3) over overlapping tiles and blend with feathered weights."""
    height, width = array.shape[:2]
    boxes = tile_boxes(width, height, tile, overlap)
    out = np.zeros((height * scale, width * scale, array.shape[2]), dtype=np.float32)
    weight = np.zeros((height * scale, width * scale, 1), dtype=np.float32)
    out_size = (width * scale, height * scale)
    for index, (left, top, right, bottom) in enumerate(boxes):
        result = run_tile(array[top:bottom, left:right])
        scaled = (left * scale, top * scale, right * scale, bottom * scale)
        expected = (scaled[3] - scaled[1], scaled[2] - scaled[0])
        if result.shape[:2] != expected:
            raise EngineError(f"model: the upscaler returned {result.shape[1]}x{result.shape[0]} for a tile expected at {expected[1]}x{expected[0]}")
        w = feather(scaled, out_size, overlap * scale)[..., None]
        out[scaled[1] : scaled[3], scaled[0] : scaled[2]] += result * w
        weight[scaled[1] : scaled[3], scaled[0] : scaled[2]] += w
        if on_tile is not None:
            on_tile(index + 1, len(boxes))
    return out / weight


def blend_images(size: tuple[int, int], tiles: list[tuple[Box, Image.Image]], overlap: int) -> Image.Image:
    """Feather-blend same-scale tiles (e.g. a detail pass's img2img outputs) into one image of `size`."""
    width, height = size
    out = np.zeros((height, width, 3), dtype=np.float32)
    weight = np.zeros((height, width, 1), dtype=np.float32)
    for box, image in tiles:
        left, top, right, bottom = box
        pixels = np.asarray(image.convert("RGB").resize((right - left, bottom - top), Image.Resampling.LANCZOS), dtype=np.float32)
        w = feather(box, size, overlap)[..., None]
        out[top:bottom, left:right] += pixels * w
        weight[top:bottom, left:right] += w
    return Image.fromarray(np.round(out / weight).clip(0, 255).astype(np.uint8), "RGB")


# ----- on the engine: the upscaler under the device queue, the detail pass through check/generate -----


@dataclass
class DetailPass:
    """img2img over tiles of the upscaled image (SD.Next's "SD upscale"): new detail at the model's own scale."""

    denoise: float
    prompt: str
    seed: int
    model: str | None = None
    negative_prompt: str = ""
    steps: int | None = None
    guidance_scale: float | None = None
    sampler: str = "default"
    tile: int | None = None  # default: the diffusion model's native size
    overlap: int = 64


@dataclass
class UpscaleOutcome:
    image: Image.Image
    upscaler: dict[str, Any]  # what enlarged it: the model's description, or {"name": "Lanczos"}
    notes: list[str]
    timings: dict[str, float]
    engine: dict[str, Any]
    detail: dict[str, Any] | None = None  # the detail pass as it ran: model, steps, strength, seed, tiles
    model: dict[str, Any] | None = None  # the diffusion model's description, when a detail pass ran


async def upscale_on_engine(
    engine: Any,
    image: Image.Image,
    scale: int,
    *,
    upscaler: UpscalerSource | None,
    tile: int,
    overlap: int,
    detail: DetailPass | None = None,
    on_step: Callable[[int, int], None] | None = None,
    on_tile: Callable[[int, int], None] | None = None,
    ticket: Any = None,
) -> UpscaleOutcome:
    """Enlarge `image` by `scale` on the engine's device, in its queue, then optionally add detail by img2img tiles.

    One queue place is held for the whole call (taken here unless the caller's background task holds one),
    so a busy server refuses the call before it starts, never between its tiles.
    """
    import time

    from .request import EngineRequest

    if upscaler is not None and not hasattr(engine, "queue"):
        # A remote engine (IMGTOOLS_ENGINE=ray) runs diffusion jobs only; an upscaler model needs this process's device.
        raise UpscalerError(
            "model: upscaler models run on the local engine only (IMGTOOLS_ENGINE=local); without `model` the upscale "
            "is Lanczos, and the detail pass still runs"
        )
    # Lanczos alone never touches the device; anything else takes its place in the queue now.
    own_ticket = ticket is None and (upscaler is not None or detail is not None)
    if own_ticket:
        ticket = engine.admit()
    timings: dict[str, float] = {}
    notes: list[str] = []
    try:
        started = time.perf_counter()
        if upscaler is None:
            enlarged = lanczos(image, scale)
            described: dict[str, Any] = {"name": "Lanczos"}
            timings["upscale_s"] = round(time.perf_counter() - started, 4)
            engine_info = engine.describe_choices().as_dict()
        else:

            def work(cancel: threading.Event) -> tuple[Image.Image, list[str], dict[str, Any], float]:
                loading = time.perf_counter()
                model = load_upscaler(upscaler, engine.device, engine.dtype)
                loaded = time.perf_counter() - loading
                try:
                    out, passes = model.upscale(image, scale, tile=tile, overlap=overlap, cancel=cancel)
                    return out, passes, model.describe(), loaded
                except torch.OutOfMemoryError:
                    raise UpscalerError(f"tile: out of memory on {engine.device} at {tile} px tiles; use a smaller tile") from None
                except EngineError:
                    raise
                except Exception as exc:  # a model spandrel loaded but cannot run fails this call only
                    log.error("upscaler failed", exc_info=exc)
                    raise UpscalerError(
                        f"model: {upscaler.name!r} failed while upscaling ({type(exc).__name__}: {(str(exc).splitlines() or [''])[0][:160]})"
                    ) from exc
                finally:
                    del model  # the weights go with this call, so the diffusion models' cache budget stays true

            (enlarged, passes, described, load_s), waited = await engine.queue.run(
                f"upscale:{upscaler.name}", work, ticket=ticket
            )
            notes += passes
            timings.update(queue_s=round(waited, 4), load_s=round(load_s, 4))
            timings["upscale_s"] = round(time.perf_counter() - started - waited - load_s, 4)
            engine_info = {**engine.describe_choices().as_dict(), "upscaler_dtype": described["dtype"]}
        outcome = UpscaleOutcome(enlarged, described, notes, timings, engine_info)
        if detail is None:
            return outcome
        detail_started = time.perf_counter()
        _, family = await engine.aresolve(detail.model)
        multiple = int(getattr(family, "size_multiple", 8))
        wanted = detail.tile or family.native_size

        def fit(length: int) -> int:
            return max(multiple, min(wanted, length) // multiple * multiple)

        tile_size = (fit(enlarged.width), fit(enlarged.height))
        if enlarged.width < multiple or enlarged.height < multiple:
            raise UpscalerError(f"scale: the upscaled image is smaller than the model's size multiple ({multiple})")
        step_overlap = min(detail.overlap, min(tile_size) // 2)
        boxes = tile_boxes(enlarged.width, enlarged.height, tile_size, step_overlap)
        painted: list[tuple[Box, Image.Image]] = []
        run = None
        for index, box in enumerate(boxes):
            if on_tile is not None:
                on_tile(index, len(boxes))
            request = EngineRequest(
                mode="img2img",
                model=detail.model,
                prompt=detail.prompt,
                negative_prompt=detail.negative_prompt,
                width=tile_size[0],
                height=tile_size[1],
                steps=detail.steps,
                guidance_scale=detail.guidance_scale,
                sampler=detail.sampler,
                seeds=[detail.seed],
                strength=detail.denoise,
                image=enlarged.crop(box),
            )
            job = await engine.acheck(request)
            run = await engine.generate(job, on_step, ticket=ticket)
            painted.append((box, run.images[0]))
        assert run is not None
        outcome.image = blend_images(enlarged.size, painted, step_overlap)
        outcome.detail = {
            "model": job.source.spec,
            "denoise": detail.denoise,
            "steps": job.steps,
            "guidance_scale": job.guidance_scale,
            "sampler": run.sampler_label,
            "seed": detail.seed,
            "tile": list(tile_size),
            "overlap": step_overlap,
            "tiles": len(boxes),
            "steps_run_per_tile": run.steps_run,
        }
        outcome.model = run.model.as_dict()
        outcome.engine = {**outcome.engine, **run.engine.as_dict()}
        outcome.notes += run.warnings + job.notes
        timings["detail_s"] = round(time.perf_counter() - detail_started, 4)
        return outcome
    finally:
        if own_ticket and ticket is not None:
            ticket.release()
