"""The backend interface: what computes a loaded pipeline's heavy parts (UNet, VAE decoder), picked by id."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    from ...config import Settings
    from ..cache import LoadedModel
    from ..device import DeviceFacts


@dataclass(frozen=True)
class Capabilities:
    """What a backend can run, declared on its class so choices and refusals read one place."""

    device_kinds: frozenset[str]  # DeviceFacts.kind values it runs on
    families: frozenset[str] | None  # Family values; None: any model torch can load
    lora: bool  # runs a UNet with LoRA adapters active
    any_size: bool  # every multiple-of-8 size; False: only sizes its converted graphs were traced for


@dataclass(frozen=True)
class RequestShape:
    """The facts about one request that decide whether a backend can serve it."""

    mode: str  # txt2img | img2img | inpaint
    width: int
    height: int
    images: int
    guidance: bool  # classifier-free guidance doubles the UNet batch
    loras_active: bool

    @property
    def unet_batch(self) -> int:
        return self.images * (2 if self.guidance else 1)


@dataclass
class BackendRun:
    """What computed one request, shown in the result's `engine` info: per component, and why."""

    backend: str  # the backend that ran the UNet (the bulk of the time)
    reason: str
    components: dict[str, str] = field(default_factory=dict)  # unet / vae_decoder -> backend id
    notes: list[str] = field(default_factory=list)  # conversions, cache hits, mid-run fallbacks
    prepare_seconds: float = 0.0  # converting/compiling before the run (first use of a model)

    def as_dict(self) -> dict[str, Any]:
        info: dict[str, Any] = {"backend": self.backend, "backend_reason": self.reason}
        if self.components:
            info["backend_components"] = dict(self.components)
        if self.notes:
            info["backend_notes"] = list(self.notes)
        return info


class Backend(ABC):
    """One way of computing a pipeline; built once per engine, holding per-model state on the LoadedModel."""

    id: ClassVar[str]
    capabilities: ClassVar[Capabilities]
    components: ClassVar[tuple[str, ...]]  # the pipeline parts it computes in place of torch ("unet", "vae_decoder")

    def __init__(self, settings: "Settings", facts: "DeviceFacts") -> None:
        self.settings = settings
        self.facts = facts

    @classmethod
    @abstractmethod
    def unavailable(cls, facts: "DeviceFacts") -> str | None:
        """Why this backend cannot run on this machine at all (package, device, providers); None when it can."""

    @abstractmethod
    def prepare(self, model: "LoadedModel", shape: RequestShape) -> dict[str, str]:
        """Get ready to serve `shape` on `model` (converting on first use); returns {component: why not} for each
        of `components` it cannot serve, which then run on torch. Empty: it serves them all.
        """

    @contextmanager
    def running(self, pipe: Any, model: "LoadedModel", served: list[str], run: BackendRun) -> Iterator[None]:
        """Make `pipe` compute its `served` components with this backend for one run, and leave it as it was after."""
        yield

    def state_bytes(self, model: "LoadedModel") -> int:
        """Memory this backend holds for `model` beyond the torch weights (compiled graphs), for the cache budget."""
        return 0

    def describe(self) -> dict[str, Any]:
        return {"id": self.id}

