"""LoRA adapters: finding them (LoRA folders, paths, HF ids), telling them apart by tensor names, keeping them loaded per model."""

from __future__ import annotations

import hashlib
import logging
import re
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from .errors import EngineError
from . import families as _families
from .families import FamilyInfo, FamilySpec
from .weights import HeaderError, SafetensorsHeader, read_header, tensor_data_sha256

log = logging.getLogger(__name__)

LORA_SUFFIX = ".safetensors"
# A model keeps at most this many adapters loaded (a request may use 8); the least recently used go first.
MAX_LOADED_ADAPTERS = 12
# Tensor-name fragments of the LoRA formats diffusers loads: peft (lora_A/B), old diffusers (lora.down/up),
# kohya/A1111 (lora_down/up).
_LORA_MARKERS = (".lora_A.", ".lora_B.", ".lora.down.", ".lora.up.", ".lora_down.", ".lora_up.", ".lora_linear_layer.")
_DOWN_MARKERS = (".lora_A.", ".lora.down.", ".lora_down.", ".lora_linear_layer.down.")
_HUB_LORA = re.compile(r"^(?P<repo>[A-Za-z0-9][\w.\-]*/[\w.\-]+)(?:/(?P<file>[\w.\-/]+\.safetensors))?$")
_PREFERRED_HUB_FILE = "pytorch_lora_weights.safetensors"


class LoraNotFoundError(EngineError):
    """A requested LoRA is not in the LoRA folders, not a file, and not a cached/reachable hub id."""


class LoraLoadError(EngineError):
    """A LoRA exists but does not fit the model (wrong family, not a LoRA, unreadable)."""


@dataclass(frozen=True)
class LoraInfo:
    """What a LoRA file's tensor names say about it."""

    family: FamilySpec | None  # None when its shapes match no known family (e.g. the tiny test models)
    rank: int | None
    components: tuple[str, ...]  # unet, text_encoder, text_encoder_2


def lora_info(header: SafetensorsHeader) -> LoraInfo | None:
    """The LoRA facts of a safetensors file, or None when its tensor names are not a LoRA's."""
    names = [name for name in header.tensors if any(marker in name for marker in _LORA_MARKERS)]
    if not names:
        return None
    components: set[str] = set()
    for name in names:
        if name.startswith(("text_encoder_2.", "lora_te2_")):
            components.add("text_encoder_2")
        elif name.startswith(("text_encoder.", "lora_te_", "lora_te1_")):
            components.add("text_encoder")
        else:
            components.add("unet")
    rank = None
    # A family whose LoRAs carry names no other family's have (e.g. SDXL's second text encoder) says so itself.
    family = next(
        (spec for spec in _families.all_families() if any(m in n for m in spec.lora_markers for n in names)), None
    )
    # The text width a LoRA's cross-attention key projection reads tells the UNet families apart.
    context_dims = {spec.lora_context_dim: spec for spec in _families.all_families() if spec.lora_context_dim}
    for name in names:
        if not any(marker in name for marker in _DOWN_MARKERS):
            continue
        shape = header.tensors[name].shape
        if rank is None and shape:
            rank = shape[0]
        # attn2 is cross-attention: its key projection reads the text encoder's width.
        if family is None and "attn2" in name and ("to_k" in name) and len(shape) >= 2:
            family = context_dims.get(shape[1])
    return LoraInfo(family=family, rank=rank, components=tuple(sorted(components)))


@dataclass(frozen=True)
class LoraSource:
    """Where a requested LoRA lives; `path` is None for a hub LoRA that is not downloaded yet."""

    spec: str  # what the caller asked for
    name: str  # short name for infotext tags (the file's stem, as A1111 names LoRAs)
    kind: Literal["dir", "file", "hub"]
    path: Path | None
    info: LoraInfo | None = None
    repo_id: str | None = None
    filename: str | None = None
    version: int = 0  # the file's mtime (ns): a LoRA file replaced in place is a new adapter

    @property
    def key(self) -> str:
        if self.path is not None:
            return f"{self.path}#{self.version}"
        return f"hub:{self.repo_id}/{self.filename or ''}"


def find_lora_files(lora_dirs: list[Path]) -> list[tuple[str, Path]]:
    """(name, path) for every .safetensors file under the LoRA folders; the name is the relative path without suffix,
    except that a folder diffusers saved (`save_lora_weights(dir)` writes dir/pytorch_lora_weights.safetensors, as
    the hub's LoRA repos hold) is named by the folder: `tiny-lora`, not `tiny-lora/pytorch_lora_weights`."""
    found: list[tuple[str, Path]] = []
    seen: set[str] = set()
    for root in lora_dirs:
        root = Path(root).expanduser()
        if not root.is_dir():
            continue
        for path in sorted(root.rglob(f"*{LORA_SUFFIX}")):
            relative = path.relative_to(root)
            folder_named = path.name == _PREFERRED_HUB_FILE and relative.parent != Path(".")
            name = (relative.parent if folder_named else relative.with_suffix("")).as_posix()
            if name in seen:
                continue  # the first folder wins, as it does when resolving the name
            seen.add(name)
            found.append((name, path.resolve()))
    return found


def _folder_lora(folder: Path, spec: str) -> Path | None:
    """The weights file of a LoRA folder (diffusers' or a hub repo's layout): pytorch_lora_weights.safetensors,
    else its only .safetensors file; None when it has none."""
    preferred = folder / _PREFERRED_HUB_FILE
    if preferred.is_file():
        return preferred
    files = sorted(folder.glob(f"*{LORA_SUFFIX}"))
    if len(files) > 1:
        names = ", ".join(f.name for f in files[:10])
        raise LoraNotFoundError(f"loras: {spec!r} is a folder of several LoRA files; name one as {spec}/<file>: {names}")
    return files[0] if files else None


def _checked(source: LoraSource) -> LoraSource:
    assert source.path is not None
    try:
        info = lora_info(read_header(source.path))
    except HeaderError as exc:
        raise LoraLoadError(f"loras: {source.spec!r} is not a readable .safetensors file ({exc})") from exc
    if info is None:
        raise LoraLoadError(
            f"loras: {source.spec!r} ({source.path.name}) is not a LoRA: none of its tensors are lora_A/lora_B or lora_down/lora_up"
        )
    version = source.path.stat().st_mtime_ns
    return LoraSource(source.spec, source.name, source.kind, source.path, info, source.repo_id, source.filename, version)


def resolve_lora(spec: str, *, lora_dirs: list[Path], hub_cache: Path, offline: bool) -> LoraSource:
    """A LoRA by name in the LoRA folders, by path, or by HF id (`owner/repo` or `owner/repo/file.safetensors`)."""
    spec = spec.strip()
    files = find_lora_files(lora_dirs)
    by_name = {name: path for name, path in files}
    plain = spec.removesuffix(LORA_SUFFIX)
    folder_file = plain.removesuffix("/" + _PREFERRED_HUB_FILE.removesuffix(LORA_SUFFIX))
    if folder_file != plain and folder_file in by_name:
        plain = folder_file  # `tiny-lora/pytorch_lora_weights`, the file inside a folder listed as `tiny-lora`
    if plain in by_name:
        return _checked(LoraSource(spec, Path(plain).name, "dir", by_name[plain]))
    for root in lora_dirs:
        folder = Path(root).expanduser() / plain
        # A LoRA folder whose one weights file has another name (a hub repo's own file name) goes by the folder too.
        if plain and folder.is_dir() and (weights := _folder_lora(folder, spec)) is not None:
            return _checked(LoraSource(spec, Path(plain).name, "dir", weights.resolve()))
    stems = [path for name, path in files if Path(name).name == Path(plain).name and "/" not in plain]
    if len(stems) == 1:
        return _checked(LoraSource(spec, Path(plain).name, "dir", stems[0]))
    if len(stems) > 1:
        names = ", ".join(name for name, path in files if path in stems)
        raise LoraNotFoundError(f"loras: {spec!r} is ambiguous; give one of {names}")
    path = Path(spec).expanduser()
    if path.is_dir() and (weights := _folder_lora(path, spec)) is not None:
        return _checked(LoraSource(spec, path.resolve().name, "file", weights.resolve()))
    if path.is_file():
        if path.suffix.lower() != LORA_SUFFIX:
            raise LoraLoadError(f"loras: {spec!r} is not a .safetensors file; LoRAs are loaded from .safetensors only")
        return _checked(LoraSource(spec, path.stem, "file", path.resolve()))
    hub = _HUB_LORA.match(spec)
    if hub and not path.is_absolute() and not spec.startswith((".", "~")):
        return _hub_lora(spec, hub.group("repo"), hub.group("file"), hub_cache=hub_cache, offline=offline)
    available = ", ".join(name for name, _ in files[:30]) or "none"
    if len(files) > 30:
        available += f", … ({len(files)} in all; list_models shows them)"
    where = "IMGTOOLS_LORA_DIRS" if lora_dirs else "IMGTOOLS_LORA_DIRS (not set)"
    raise LoraNotFoundError(
        f"loras: {spec!r} not found; available in {where}: {available}; or give a .safetensors path or a HuggingFace id"
    )


def _hub_lora(spec: str, repo_id: str, filename: str | None, *, hub_cache: Path, offline: bool) -> LoraSource:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        snapshot = Path(snapshot_download(repo_id, local_files_only=True, cache_dir=hub_cache))
    except (LocalEntryNotFoundError, FileNotFoundError, OSError, ValueError):
        snapshot = None
    if snapshot is not None:
        if filename is None:
            filename = _pick_hub_file(spec, [p.relative_to(snapshot).as_posix() for p in snapshot.rglob(f"*{LORA_SUFFIX}")])
        if filename is not None and (snapshot / filename).is_file():
            path = snapshot / filename
            return _checked(LoraSource(spec, path.stem, "hub", path, repo_id=repo_id, filename=filename))
    if offline:
        raise LoraNotFoundError(
            f"loras: {spec!r} is not in the LoRA folders or the HuggingFace cache and offline mode is on; "
            f"run `hf download {repo_id}` where the hub is reachable, or put the file in IMGTOOLS_LORA_DIRS"
        )
    name = Path(filename).stem if filename else repo_id.split("/")[-1]
    return LoraSource(spec, name, "hub", None, repo_id=repo_id, filename=filename)


def _pick_hub_file(spec: str, names: list[str]) -> str | None:
    if not names:
        return None
    if _PREFERRED_HUB_FILE in names:
        return _PREFERRED_HUB_FILE
    if len(names) == 1:
        return names[0]
    raise LoraNotFoundError(f"loras: {spec!r} holds several LoRA files; name one as {spec}/<file>: {', '.join(sorted(names)[:10])}")


def download_lora(source: LoraSource, *, hub_cache: Path) -> LoraSource:
    """Fetch a hub LoRA into the HF cache (in the engine's worker thread, never on the event loop)."""
    if source.path is not None:
        return source
    from huggingface_hub import HfApi, hf_hub_download

    assert source.repo_id is not None
    try:
        filename = source.filename or _pick_hub_file(
            source.spec, [f for f in HfApi().list_repo_files(source.repo_id) if f.endswith(LORA_SUFFIX)]
        )
        if filename is None:
            raise LoraNotFoundError(f"loras: {source.spec!r} has no .safetensors file on the hub")
        path = Path(hf_hub_download(source.repo_id, filename, cache_dir=hub_cache))
    except EngineError:
        raise
    except Exception as exc:  # the hub client raises many transport/HTTP types; all mean "could not fetch"
        raise LoraNotFoundError(
            f"loras: {source.spec!r} could not be downloaded ({type(exc).__name__}: {str(exc).splitlines()[0][:160] if str(exc) else 'no detail'}); "
            "check the id and network, or put the file in IMGTOOLS_LORA_DIRS"
        ) from exc
    return _checked(LoraSource(source.spec, path.stem, "hub", path, repo_id=source.repo_id, filename=filename))


def check_fits(source: LoraSource, family: FamilyInfo, model_name: str) -> None:
    """Refuse a LoRA made for another family before any weights are touched."""
    # Families sharing a denoiser layout (FLUX.1 and Kontext, Qwen-Image and its Edit models) take each other's LoRAs.
    if source.info is not None and source.info.family is not None and (
        source.info.family.lora_layout_id != family.family.lora_layout_id
    ):
        raise LoraLoadError(
            f"loras: {source.spec!r} is an {source.info.family.label} LoRA; the model {model_name!r} is {family.family.label}"
        )


# ----- adapters kept loaded in one pipeline -----


@dataclass
class LoadedAdapter:
    adapter_name: str
    source: LoraSource
    bytes: int
    short_hash: str  # first 12 hex digits of the tensor-data SHA-256, as A1111's "Lora hashes" field shows
    last_used: float


@dataclass(frozen=True)
class AppliedLora:
    """One LoRA as it ran: recorded in the infotext and the sidecar."""

    name: str
    spec: str
    weight: float
    hash: str | None
    path: str | None

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "spec": self.spec, "weight": self.weight, "hash": self.hash, "path": self.path}


def _adapter_name(source: LoraSource) -> str:
    # peft keeps adapters in ModuleDicts, so names must not contain dots; the hash keeps two "style.safetensors" apart.
    stem = re.sub(r"\W", "_", source.name)[:40] or "lora"
    return f"{stem}_{hashlib.sha1(source.key.encode()).hexdigest()[:8]}"


class AdapterSet:
    """The LoRAs loaded into one pipeline as named adapters, and which are active at what weight.

    Each LoRA is loaded once (`load_lora_weights`) and stays, unfused, until MAX_LOADED_ADAPTERS
    pushes out the least recently used; a request only switches which adapters are active
    (`set_adapters`) or turns LoRA off (`disable_lora`), so nothing carries over between requests
    and nothing is re-read or re-fused.
    """

    def __init__(self, float_itemsize: int, max_loaded: int = MAX_LOADED_ADAPTERS) -> None:
        self.float_itemsize = float_itemsize
        self.max_loaded = max_loaded
        self._loaded: OrderedDict[str, LoadedAdapter] = OrderedDict()
        self._active: tuple[tuple[str, float], ...] = ()

    @property
    def loaded(self) -> list[LoadedAdapter]:
        return list(self._loaded.values())

    @property
    def active(self) -> list[tuple[str, float]]:
        return list(self._active)

    @property
    def bytes(self) -> int:
        return sum(adapter.bytes for adapter in self._loaded.values())

    def apply(self, pipe: Any, wanted: list[tuple[LoraSource, float]], model_name: str) -> list[AppliedLora]:
        """Make exactly `wanted` active on `pipe` (weight 0 counts as absent); returns what ran."""
        applied: list[AppliedLora] = []
        active: list[tuple[str, float]] = []
        changed = False
        for source, weight in wanted:
            if weight == 0:
                applied.append(AppliedLora(source.name, source.spec, 0.0, None, str(source.path) if source.path else None))
                continue
            adapter, loaded_now = self._ensure_loaded(pipe, source, model_name)
            changed |= loaded_now
            active.append((adapter.adapter_name, weight))
            applied.append(AppliedLora(source.name, source.spec, weight, adapter.short_hash, str(adapter.source.path)))
        changed |= self._trim(pipe, keep={name for name, _ in active})
        target = tuple(active)
        if changed or target != self._active:
            if target:
                pipe.enable_lora()  # set_adapters alone leaves LoRA layers disabled after disable_lora
                pipe.set_adapters([name for name, _ in target], adapter_weights=[w for _, w in target])
            elif self._loaded:
                pipe.disable_lora()
            self._active = target
        return applied

    def _ensure_loaded(self, pipe: Any, source: LoraSource, model_name: str) -> tuple[LoadedAdapter, bool]:
        adapter = self._loaded.get(source.key)
        if adapter is not None:
            self._loaded.move_to_end(source.key)
            adapter.last_used = time.monotonic()
            return adapter, False
        assert source.path is not None
        name = _adapter_name(source)
        try:
            pipe.load_lora_weights(str(source.path), adapter_name=name)
        except Exception as exc:  # diffusers/peft raise ValueError/KeyError/RuntimeError for LoRAs that do not fit
            self._forget(pipe, name)
            raise LoraLoadError(
                f"loras: {source.spec!r} could not be loaded into {model_name!r}: {type(exc).__name__}: "
                f"{str(exc).splitlines()[0][:200] if str(exc) else 'no detail'}"
            ) from exc
        header = read_header(source.path)
        adapter = LoadedAdapter(
            adapter_name=name,
            source=source,
            bytes=header.nbytes(self.float_itemsize),
            short_hash=tensor_data_sha256(source.path)[:12],
            last_used=time.monotonic(),
        )
        self._loaded[source.key] = adapter
        log.info("loaded LoRA %s into %s as adapter %s", source.spec, model_name, name)
        return adapter, True

    def _trim(self, pipe: Any, keep: set[str]) -> bool:
        trimmed = False
        for key in list(self._loaded):
            if len(self._loaded) <= self.max_loaded:
                break
            if self._loaded[key].adapter_name in keep:
                continue
            adapter = self._loaded.pop(key)
            pipe.delete_adapters([adapter.adapter_name])
            trimmed = True
        return trimmed

    def _forget(self, pipe: Any, name: str) -> None:
        """Remove what a failed load may have injected, so the next request sees a clean model."""
        try:
            present = {a for adapters in pipe.get_list_adapters().values() for a in adapters}
            if name in present:
                pipe.delete_adapters([name])
        except Exception as exc:  # cleaning up after a failure must not hide the failure itself
            log.warning("could not remove the half-loaded adapter %s: %s", name, exc)
