"""Tiny random-weight models and files for offline tests and demos (`make-test-model`), one builder per family id.

A family adds its builder in its own module here, named `tiny_<family>.py`, with one call at the bottom:

    register_builder("qwen-image", make_tiny_qwen_image)   # builder(folder, seed=0) -> folder

Builder modules are imported when a family is first looked up, not with this package, so importing it stays
cheap: `tiny_<family>.py` (dashes as underscores) first, every `tiny_*` module only for a family still unknown.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from pathlib import Path

Builder = Callable[..., Path]
"""`builder(folder: Path, seed: int = 0) -> Path`: writes a tiny pipeline into `folder` and returns it."""

_BUILDERS: dict[str, Builder] = {}
_discovered = False
_BASE_MODULE = "tiny_sd"  # the SD 1.x / SDXL builders most tests use


def register_builder(family: str, builder: Builder) -> None:
    """Make `make_test_model(folder, family)` build with `builder`; a family id is registered once."""
    if family in _BUILDERS and _BUILDERS[family] is not builder:
        raise ValueError(f"test model builder for {family!r} registered twice")
    _BUILDERS[family] = builder


def _modules() -> set[str]:
    return {m.name for m in pkgutil.iter_modules(__path__) if m.name.startswith("tiny_")}


def _discover_all() -> None:
    global _discovered
    if not _discovered:
        for name in sorted(_modules()):
            importlib.import_module(f"{__name__}.{name}")
        _discovered = True


def _find(family: str) -> Builder | None:
    for name in (_BASE_MODULE, "tiny_" + family.replace("-", "_")):
        if family not in _BUILDERS and name in _modules():
            importlib.import_module(f"{__name__}.{name}")
    if family not in _BUILDERS:
        _discover_all()
    return _BUILDERS.get(family)


def builder_families() -> list[str]:
    """Every family id `make_test_model` can build."""
    _discover_all()
    return sorted(_BUILDERS)


def make_test_model(folder: Path | str, family: str = "sd15", seed: int = 0) -> Path:
    """Write a tiny pipeline of `family` into `folder` (loadable through the same code path as a real model)."""
    builder = _find(family)
    if builder is None:
        raise ValueError(f"family: unknown {family!r}; allowed: {', '.join(sorted(_BUILDERS))}")
    return builder(Path(folder), seed=seed)


__all__ = ["Builder", "builder_families", "make_test_model", "register_builder"]
