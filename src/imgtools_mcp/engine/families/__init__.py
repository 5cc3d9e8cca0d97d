"""Model families: one module per family registers its FamilySpec; everything else asks the registry.

Family modules are found by listing this package, so a new family is one new module (plus a tiny
test model in imgtools_mcp/testing/) and no edit here.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Iterable
from pathlib import Path

from . import registry
from .base import GUIDANCE_KWARG, MODES, Component, FamilyInfo, FamilySpec, Mode, Variant
from .registry import (
    UnknownFamilyError,
    detect_configs,
    detect_folder,
    detect_state_dict,
    folder_configs,
    get,
    ids,
    register,
    supporting,
)

_NOT_FAMILIES = {"base", "registry", "checks"}


def _load_family_modules() -> None:
    for module in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if module.name not in _NOT_FAMILIES and not module.name.startswith("_"):
            importlib.import_module(f"{__name__}.{module.name}")


_load_family_modules()


def all_families() -> list[FamilySpec]:
    return registry.all()


def looks_turbo(name: str) -> bool:
    """Whether a model's name marks it as a distilled few-step variant of any family."""
    return any(spec.variant_for(name) is not None and spec.variant_for(name).distilled for spec in registry.all())


def family_from_folder(folder: Path, name: str) -> FamilyInfo:
    """Read model_index.json and the component configs without loading weights."""
    return detect_folder(folder, name)


def family_from_state_dict_keys(
    keys: Iterable[str], name: str, unet_in_channels: int = 4, shapes: dict[str, tuple[int, ...]] | None = None
) -> FamilyInfo:
    """Recognise an original (A1111-style) single-file checkpoint by the keys it carries."""
    from .sd import CHECKPOINT_IN_KEY

    shapes = dict(shapes or {})
    shapes.setdefault(CHECKPOINT_IN_KEY, (0, unet_in_channels))
    return detect_state_dict(keys, name, shapes)


__all__ = [
    "GUIDANCE_KWARG",
    "MODES",
    "Component",
    "FamilyInfo",
    "FamilySpec",
    "Mode",
    "UnknownFamilyError",
    "Variant",
    "all_families",
    "detect_configs",
    "detect_folder",
    "detect_state_dict",
    "family_from_folder",
    "family_from_state_dict_keys",
    "folder_configs",
    "get",
    "ids",
    "looks_turbo",
    "register",
    "supporting",
]
