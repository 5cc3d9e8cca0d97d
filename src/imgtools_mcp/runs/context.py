"""What a run may use (engine, store, resolver, VLM, progress, stop switch) and the error it raises for bad input."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Protocol

import anyio

from .progress import ProgressSink

if TYPE_CHECKING:
    from ..config import Settings
    from ..engine.engine import Engine
    from ..images.control_maps import ControlModels
    from ..images.refs import ResolvedImage
    from ..images.segment import Segmenter
    from ..store import OutputStore
    from ..vlm.client import VLMClient


class RunInputError(ValueError):
    """A request the run cannot do as given; the message is one line naming the parameter and what is allowed."""


class RunFailed(Exception):
    """A run that stopped with nothing to show; the message says why and what it kept."""


class Resolver(Protocol):
    async def resolve(self, ref: str, *, param: str, mode: str = "RGB") -> "ResolvedImage": ...


class StopSwitch:
    """How cancel_job winds a long run down: the running step stops, the rest is skipped, what was made is kept.

    The run attaches the cancel scope of the work in progress; a stop requested before that is
    remembered and applied on attach.
    """

    def __init__(self) -> None:
        self.requested = False
        self._scope: anyio.CancelScope | None = None

    def attach(self, scope: anyio.CancelScope | None) -> None:
        self._scope = scope
        if scope is not None and self.requested:
            scope.cancel()

    def __call__(self) -> None:
        self.requested = True
        if self._scope is not None:
            self._scope.cancel()


@dataclass
class RunContext:
    """The narrow view of the server a run gets; built per call by the tool layer."""

    settings: "Settings"
    engine: "Engine"
    store: "OutputStore"
    resolver: Resolver
    vlm: "VLMClient | None" = None
    control_models: "ControlModels | None" = None  # the server's depth and pose models (None: built for this run)
    segmenter: "Segmenter | None" = None  # the server's mask_prompt segmenter (None: built for this run)
    sink: ProgressSink | None = None
    stop: StopSwitch = field(default_factory=StopSwitch)
    ticket: Any = None  # the engine queue place a background task holds, when it holds one

    def with_resolver(self, resolver: Resolver) -> "RunContext":
        return replace(self, resolver=resolver)


class ResolveOnce:
    """A resolver that remembers each reference: a sweep's cells, or a background task, share one fetch and decode."""

    def __init__(self, resolver: Resolver) -> None:
        self._resolver = resolver
        self._seen: dict[tuple[str, str], "ResolvedImage"] = {}

    async def resolve(self, ref: str, *, param: str, mode: str = "RGB") -> "ResolvedImage":
        key = (ref, mode)
        if key not in self._seen:
            self._seen[key] = await self._resolver.resolve(ref, param=param, mode=mode)
        return self._seen[key]
