"""Find a model (hub id, local diffusers folder, or single-file checkpoint) and load it as a pipeline."""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from .errors import ModelLoadError, ModelNotFoundError
from .families import FamilyInfo, detect_state_dict, family_from_folder, family_from_state_dict_keys
from .weights import read_header

log = logging.getLogger(__name__)

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*/[\w.\-]+$")
# .gguf: a quantized transformer (Q4/Q8...) of a DiT family; the rest of the pipeline comes from a same-family folder.
# Longer than any path or hub id anyone types; longer ones would only reach the file system as ENAMETOOLONG.
MAX_MODEL_SPEC_CHARS = 1024
CHECKPOINT_SUFFIXES = (".safetensors", ".gguf")


@dataclass(frozen=True)
class ModelSource:
    """Where a model's weights come from, resolved before anything heavy is loaded."""

    kind: Literal["folder", "file", "hub"]
    spec: str  # what the caller asked for
    path: Path | None  # the folder or file on disk (for hub models: the cached snapshot)
    name: str  # short name for infotext and listings

    @property
    def key(self) -> str:
        return str(self.path) if self.path else self.spec


def hf_cache_dir() -> Path:
    """The HuggingFace hub cache, read from the environment when asked (huggingface_hub reads it once, at import)."""
    explicit = os.environ.get("HF_HUB_CACHE") or os.environ.get("HUGGINGFACE_HUB_CACHE")
    if explicit:
        return Path(explicit).expanduser()
    home = os.environ.get("HF_HOME") or os.path.join(os.environ.get("XDG_CACHE_HOME", "~/.cache"), "huggingface")
    return Path(home).expanduser() / "hub"


def _hub_cache_snapshot(repo_id: str) -> Path | None:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return Path(snapshot_download(repo_id, local_files_only=True, cache_dir=hf_cache_dir()))
    except (LocalEntryNotFoundError, FileNotFoundError, OSError, ValueError):
        return None


def _hub_download(repo_id: str) -> Path:
    """Fetch a diffusers pipeline from the hub, skipping weights diffusers would not load."""
    from diffusers import DiffusionPipeline

    return Path(DiffusionPipeline.download(repo_id, use_safetensors=None, cache_dir=hf_cache_dir()))


def _local_model(spec: str, path: Path) -> ModelSource | None:
    if path.is_dir() and (path / "model_index.json").is_file():
        return ModelSource("folder", spec, path.resolve(), path.name)
    if path.is_file() and path.suffix.lower() in CHECKPOINT_SUFFIXES:
        return ModelSource("file", spec, path.resolve(), path.stem)
    if path.exists() and (path.is_file() or path.is_dir()) and path.is_absolute():
        raise ModelNotFoundError(
            f"model: {spec!r} exists but is neither a diffusers folder (with model_index.json) nor a .safetensors checkpoint"
        )
    return None


def resolve_model(spec: str, *, model_dirs: list[Path], offline: bool) -> ModelSource:
    """Turn a model reference into a ModelSource, downloading a hub model only when it is not cached."""
    spec = spec.strip()
    if not spec:
        raise ModelNotFoundError("model: empty; give a HuggingFace id, a local diffusers folder or a .safetensors file")
    if len(spec) > MAX_MODEL_SPEC_CHARS:
        raise ModelNotFoundError(
            f"model: {len(spec)} characters is longer than any model reference (at most {MAX_MODEL_SPEC_CHARS}); "
            "give a HuggingFace id, a local diffusers folder or a .safetensors file"
        )
    candidates = [Path(spec).expanduser()]
    candidates += [Path(d).expanduser() / spec for d in model_dirs]
    for path in candidates:
        try:
            found = _local_model(spec, path)
        except OSError:
            continue  # a name the file system cannot hold (ENAMETOOLONG, a bad byte): not a local model
        if found is not None:
            return found
    if not _HUB_ID.match(spec):
        raise ModelNotFoundError(
            f"model: {spec!r} is not a local folder, a .safetensors file or a HuggingFace id like 'owner/name'"
        )
    cached = _hub_cache_snapshot(spec)
    if cached is not None and (cached / "model_index.json").is_file():
        return ModelSource("hub", spec, cached, spec.split("/")[-1])
    if offline or os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
        raise ModelNotFoundError(
            f"model: {spec!r} is not in the HuggingFace cache and offline mode is on; "
            f"run `hf download {spec}` where the hub is reachable, or point IMGTOOLS_MODEL at a local folder"
        )
    try:
        folder = _hub_download(spec)
    except Exception as exc:  # the hub client raises many transport/HTTP types; all mean "could not fetch"
        raise ModelNotFoundError(
            f"model: {spec!r} is not in the HuggingFace cache and could not be downloaded "
            f"({type(exc).__name__}: {str(exc).splitlines()[0][:160] if str(exc) else 'no detail'}); "
            f"check the id and network, run `hf download {spec}`, or point IMGTOOLS_MODEL at a local folder"
        ) from exc
    return ModelSource("hub", spec, folder, spec.split("/")[-1])


def inspect_family(source: ModelSource) -> FamilyInfo:
    """The family of a model from its configs (folders) or tensor names (checkpoints), without loading weights."""
    assert source.path is not None
    if source.kind == "file" and source.path.suffix.lower() == ".gguf":
        return detect_state_dict(gguf_tensor_names(source.path), source.name)
    if source.kind == "file":
        from safetensors import safe_open

        try:
            read_header(source.path)  # bounds and shapes checked before the safetensors library maps the file
            with safe_open(str(source.path), framework="pt") as handle:
                keys = set(handle.keys())
                in_key = "model.diffusion_model.input_blocks.0.0.weight"
                in_channels = handle.get_slice(in_key).get_shape()[1] if in_key in keys else 4
        except Exception as exc:  # HeaderError, SafetensorError, OSError: whatever the bytes are, not a checkpoint
            reason = str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__
            raise ModelLoadError(f"model: {source.spec!r} is not a readable .safetensors checkpoint ({reason})") from exc
        return family_from_state_dict_keys(keys, source.name, unet_in_channels=in_channels)
    return family_from_folder(source.path, source.name)


def load_pipeline(
    source: ModelSource, family: FamilyInfo, dtype: torch.dtype, *, config: Path | None = None, offline: bool | None = None
) -> Any:
    """Load the text-to-image pipeline for a source on the CPU; the engine moves it where the plan says.

    A single-file checkpoint needs a diffusers folder of its family for configs, tokenizers and the
    scheduler (`config`); without one, diffusers fetches its default from the hub, which offline
    is refused here with what to do instead.
    """
    offline = _offline() if offline is None else offline
    import diffusers
    assert source.path is not None
    try:
        if source.kind == "file" and (source.path.suffix.lower() == ".gguf" or transformer_only_file(source.path, family)):
            pipe = _load_transformer_file_pipeline(source, family, dtype, config)
        elif source.kind == "file":
            if family.family.single_file_class is None:
                raise ModelLoadError(f"model: {source.name!r}: single-file {family.family.label} checkpoints are not supported")
            cls = getattr(diffusers, family.family.single_file_class)
            if config is None and offline:
                raise ModelLoadError(single_file_config_missing(source, family))
            extra = {"config": str(config)} if config is not None else {}
            pipe = cls.from_single_file(
                str(source.path), torch_dtype=dtype, local_files_only=offline or config is not None, **extra
            )
        else:
            cls = getattr(diffusers, folder_pipeline_class(source.path, family))
            extra = family.family.load_overrides(source.path, dtype) if family.family.load_overrides else {}
            pipe = cls.from_pretrained(str(source.path), torch_dtype=dtype, **extra)
    except ModelLoadError:
        raise
    except Exception as exc:  # diffusers raises OSError/ValueError/EnvironmentError variants for bad weights
        raise ModelLoadError(
            f"model: {source.spec!r} could not be loaded as a diffusers pipeline: {type(exc).__name__}: "
            f"{str(exc).splitlines()[0][:200] if str(exc) else 'no detail'}"
        ) from exc
    if family.family.after_load is not None:
        family.family.after_load(pipe)
    if getattr(pipe, "safety_checker", None) is not None:
        # The assistant's host applies its own content policy; the checker costs memory and blacks out images.
        pipe.safety_checker = None
    pipe.set_progress_bar_config(disable=True)
    return pipe


def gguf_tensor_names(path: Path) -> list[str]:
    """Tensor names of a GGUF file (read from its header only), for recognising the family."""
    try:
        from gguf import GGUFReader
    except ImportError:
        raise ModelLoadError(
            f"model: {path.name!r} is a GGUF file, which needs the gguf package: pip install 'imgtools-mcp[gguf]'"
        ) from None
    return [tensor.name for tensor in GGUFReader(str(path)).tensors]


# Tensor-name prefixes of a VAE inside a single file: such a file carries the whole pipeline, not only a transformer.
_WHOLE_PIPELINE_MARKERS = ("first_stage_model.", "vae.")


def transformer_only_file(path: Path, family: FamilyInfo) -> bool:
    """Whether a .safetensors file of a DiT family holds its transformer alone (FLUX.1, Chroma, Qwen-Image and
    Z-Image files are usually published so); a file with a VAE inside is a whole pipeline for `from_single_file`."""
    if family.family.denoiser != "transformer":
        return False
    names = read_header(path).tensors
    return not any(name.startswith(_WHOLE_PIPELINE_MARKERS) for name in names)


def _load_transformer_file_pipeline(source: ModelSource, family: FamilyInfo, dtype: torch.dtype, config: Path | None) -> Any:
    """A transformer file (GGUF-quantized, which diffusers dequantizes per layer, or .safetensors in the original or
    diffusers layout) in the pipeline of a same-family diffusers folder, which gives the text encoders, VAE and
    scheduler."""
    import json

    import diffusers
    from diffusers import GGUFQuantizationConfig

    assert source.path is not None
    gguf = source.path.suffix.lower() == ".gguf"
    if config is None:
        raise ModelLoadError(
            f"model: {source.name!r} is a {'GGUF ' if gguf else ''}{family.family.label} transformer; the rest of its "
            f"pipeline (text encoders, VAE, scheduler) comes from a {family.family.label} diffusers folder in "
            "IMGTOOLS_MODEL_DIRS or the HF cache, and none is there"
        )
    index = json.loads((config / "model_index.json").read_text())
    transformer_class = getattr(diffusers, index["transformer"][1])
    quantization = {"quantization_config": GGUFQuantizationConfig(compute_dtype=dtype)} if gguf else {}
    transformer = transformer_class.from_single_file(
        str(source.path),
        **quantization,
        config=str(config),
        subfolder="transformer",
        torch_dtype=dtype,
        local_files_only=True,
    )
    cls = getattr(diffusers, folder_pipeline_class(config, family))
    return cls.from_pretrained(str(config), transformer=transformer, torch_dtype=dtype)


def folder_pipeline_class(folder: Path, family: FamilyInfo) -> str:
    """The class to load a folder with: the one it was saved as when that is one of its family's pipelines
    (a Fill or Kontext folder loads as itself), else the family's text-to-image pipeline; other modes
    are built from it with `from_pipe`, sharing the weights."""
    import json

    saved = json.loads((folder / "model_index.json").read_text()).get("_class_name")
    known = {name for name in family.family.pipelines.values() if name}
    if family.family.inpaint_pipeline_for_inpainting_model:
        known.add(family.family.inpaint_pipeline_for_inpainting_model)
    if saved in known:
        return saved
    return family.family.pipeline_for("txt2img") or saved or "DiffusionPipeline"


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes")


def single_file_config_missing(source: ModelSource, family: FamilyInfo) -> str:
    """What to do when a single-file checkpoint has no local diffusers config to be built from."""
    from .catalog import default_config_repo

    repo = default_config_repo(source.path) if source.path else None
    fetch = (
        f"or fetch the configs once where the hub is reachable: `hf download {repo} --include '*.json' '*.txt'`"
        if repo
        else "or run once with the hub reachable so diffusers can fetch its configs"
    )
    return (
        f"model: {source.name!r} is a single-file {family.family.label} checkpoint and needs a diffusers config of the same "
        f"family, but none is local and the hub is off; put a {family.family.label} diffusers folder "
        f"(with model_index.json) in IMGTOOLS_MODEL_DIRS, {fetch}"
    )
