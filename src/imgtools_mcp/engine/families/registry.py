"""The one registry of model families: registration, lookup, and recognising a model from its files alone."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from .base import Configs, FamilyInfo, FamilySpec

_FAMILIES: dict[str, FamilySpec] = {}


class UnknownFamilyError(ValueError):
    """A model whose files match no registered family."""


def register(spec: FamilySpec) -> FamilySpec:
    """Add a family; a second family with the same id is a programming error, refused."""
    if spec.id in _FAMILIES:
        raise ValueError(f"family {spec.id!r} is already registered")
    _FAMILIES[spec.id] = spec
    return spec


def get(family_id: str) -> FamilySpec:
    try:
        return _FAMILIES[family_id]
    except KeyError:
        raise UnknownFamilyError(f"family: unknown {family_id!r}; known: {', '.join(ids())}") from None


def all() -> list[FamilySpec]:  # noqa: A001 - the registry's own vocabulary
    """Every family, most specific first (the order recognition tries them in)."""
    return sorted(_FAMILIES.values(), key=lambda s: (-s.priority, s.id))


def ids() -> list[str]:
    return sorted(_FAMILIES)


def supporting(mode: str) -> list[FamilySpec]:
    """The families with a pipeline for a mode (for errors that name them)."""
    return [s for s in all() if s.pipeline_for(mode) is not None]


def _read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())


def folder_configs(folder: Path) -> dict[str, dict[str, Any]]:
    """model_index.json and the config.json of every component folder it lists, without loading weights."""
    index = _read_json(folder / "model_index.json")
    configs: dict[str, dict[str, Any]] = {"model_index": index}
    for name, value in index.items():
        if name.startswith("_") or not isinstance(value, list):
            continue
        config = folder / name / "config.json"
        if config.is_file():
            try:
                configs[name] = _read_json(config)
            except ValueError:
                continue
    return configs


def _vae_scale_factor(configs: Configs, default: int) -> int:
    vae = configs.get("vae")
    if not vae or "block_out_channels" not in vae:
        return default
    return 2 ** (len(vae["block_out_channels"]) - 1)


def _native_size(spec: FamilySpec, configs: Configs) -> int:
    """diffusers' own default size: the denoiser's sample_size times the VAE scale, else the family's native size."""
    denoiser = configs.get(spec.denoiser, {})
    sample_size = denoiser.get("sample_size")
    if isinstance(sample_size, list | tuple):
        sample_size = sample_size[0]
    if not sample_size:
        return spec.native_size
    return int(sample_size) * _vae_scale_factor(configs, spec.vae_scale_factor)


def detect_configs(configs: Configs, name: str) -> FamilyInfo:
    """The family of a diffusers folder given as its configs (model_index plus components)."""
    for spec in all():
        if spec.claims(configs):
            denoiser = configs.get(spec.denoiser, {})
            variant = spec.variant_for(name, configs)
            inpainting = spec.inpainting_model(configs)
            return FamilyInfo(
                family=spec,
                turbo=bool(variant and variant.distilled),
                native_size=_native_size(spec, configs),
                inpainting=inpainting,
                variant=variant,
            )
    index = configs.get("model_index", {})
    raise UnknownFamilyError(
        f"model: {name!r} is a {index.get('_class_name', 'pipeline without _class_name')}, not a family this "
        f"engine runs; known families: {', '.join(ids())}"
    )


def detect_folder(folder: Path, name: str | None = None) -> FamilyInfo:
    """Recognise a diffusers folder (as `save_pretrained` writes it) from its files alone."""
    folder = Path(folder)
    return detect_configs(folder_configs(folder), name or folder.name)


def detect_state_dict(
    keys: Iterable[str], name: str, shapes: dict[str, tuple[int, ...]] | None = None
) -> FamilyInfo:
    """Recognise an original-layout single-file checkpoint by the tensor names (and a few shapes) it carries."""
    keys = set(keys)
    shapes = shapes or {}
    for spec in all():
        if spec.state_dict_markers and any(any(k.startswith(m) or f".{m}" in k for k in keys) for m in spec.state_dict_markers):
            break
    else:
        fallback = [s for s in all() if s.state_dict_fallback]
        if not fallback:
            raise UnknownFamilyError(f"model: {name!r} has tensors of no known family")
        spec = fallback[0]
    variant = spec.variant_for(name)
    return FamilyInfo(
        family=spec,
        turbo=bool(variant and variant.distilled),
        native_size=spec.native_size,
        inpainting=spec.inpainting_state_dict(shapes),
        variant=variant,
    )
