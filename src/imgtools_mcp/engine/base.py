"""The engine interface the MCP front is written against, and the factory that picks an implementation by setting.

Two implementations: the in-process `Engine` (engine.py; the default, what stdio users get) and
`RayEngine` (ray_engine.py), a client of `ImageEngine` replicas on Ray Serve. The tool layer only
uses what `EngineLike` lists, so `serve` runs unchanged on top of either.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    from ..config import Settings
    from .families import FamilyInfo
    from .loader import ModelSource
    from .lora import LoraSource
    from .queue import QueueTicket
    from .request import EngineRequest, LoraWeight, ProgressCallback, ResolvedJob, RunOutput, StepCallback

ENGINES = ("local", "ray")


@runtime_checkable
class EngineLike(Protocol):
    """What the front needs from an engine: check a request, run it with progress, admit background work, report."""

    settings: "Settings"

    def check(self, request: "EngineRequest", on_progress: "ProgressCallback | None" = None) -> "ResolvedJob": ...

    async def acheck(self, request: "EngineRequest", on_progress: "ProgressCallback | None" = None) -> "ResolvedJob": ...

    async def generate(
        self,
        job: "ResolvedJob",
        on_step: "StepCallback | None" = None,
        *,
        ticket: "QueueTicket | Any | None" = None,
        on_progress: "ProgressCallback | None" = None,
    ) -> "RunOutput": ...

    def admit(self) -> Any: ...

    def status(self) -> Any: ...

    async def aclose(self) -> None: ...

    # Model lookups the tools make before a request exists (default sizes, listings); configs only.
    def resolve(self, spec: str | None, on_progress: "ProgressCallback | None" = None) -> "tuple[ModelSource, FamilyInfo]": ...

    async def aresolve(
        self, spec: str | None, on_progress: "ProgressCallback | None" = None
    ) -> "tuple[ModelSource, FamilyInfo]": ...

    def resolve_loras(
        self, loras: "list[LoraWeight]", family: "FamilyInfo", model_name: str
    ) -> "list[tuple[LoraSource, float]]": ...

    @property
    def offline(self) -> bool: ...

    @property
    def queue_length(self) -> int: ...

    @property
    def busy(self) -> bool: ...


def build_engine(settings: "Settings") -> EngineLike:
    """The engine IMGTOOLS_ENGINE names: `local` (in this process) or `ray` (Ray Serve replicas at IMGTOOLS_RAY_ADDRESS).

    Raises ValueError with one line saying what to do when `ray` is asked for but cannot be used.
    """
    kind = getattr(settings, "engine", "local")
    if kind == "local":
        from .engine import Engine

        return Engine(settings)
    if kind == "ray":
        from .ray_engine import RayEngine

        return RayEngine(settings)
    raise ValueError(f"engine: {kind!r} is not one of {', '.join(ENGINES)} (IMGTOOLS_ENGINE)")
