"""The backend interface: what computes a loaded pipeline's heavy parts (UNet, VAE decoder), picked by id."""

from __future__ import annotations

import importlib.util
from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    from ...config import Settings
    from ..cache import LoadedModel
    from ..device import DeviceFacts
    from ..progress import Progress


@dataclass(frozen=True)
class Capabilities:
    """What a backend can run, declared once on its class; `choose_backend`, `unavailable` and `prepare` read it."""

    label: str  # as people write it ("OpenVINO")
    device_kinds: frozenset[str]  # DeviceFacts.kind values it runs on
    families: frozenset[str] | None  # family ids it computes; None: any model torch can load
    lora: bool  # runs a UNet with LoRA adapters active
    any_size: bool  # every multiple-of-8 size; False: only sizes its converted graphs can run
    # Device kinds where `auto` picks it over torch for its families (where it is measured faster).
    preferred_on: frozenset[str] = frozenset()
    why_preferred: str = ""  # the reason `auto` gives when it picks it
    # Denoiser shapes it keeps compiled per model (the oldest goes when another is compiled); None: as many as run.
    compiled_shapes: int | None = None
    package: str | None = None  # the module it needs ("openvino"); None: always there
    extra: str | None = None  # the pip extra that installs `package`

@dataclass(frozen=True)
class RequestShape:
    """The facts about one request that decide whether a backend can serve it."""

    mode: str  # txt2img | img2img | inpaint
    width: int
    height: int
    images: int
    guidance: bool  # classifier-free guidance doubles the UNet batch
    loras_active: bool
    warmup: bool = False  # the start-up warm-up (engine/warmup.py): its images and UNet inputs are not kept
    speed: str = "quality"  # the request's step cache (engine/step_cache.py): OpenVINO prepares a shallow UNet for it
    unet_extras: bool = False  # ControlNet residuals or IP-Adapter embeddings go into the UNet's blocks

    @property
    def unet_batch(self) -> int:
        return self.images * (2 if self.guidance else 1)

    @property
    def denoiser_shape(self) -> tuple[int, int, int]:
        """What a compiled denoiser is specialised on: the size and the UNet's batch (images x CFG)."""
        return (self.width, self.height, self.unet_batch)


@dataclass
class BackendRun:
    """What computed one request, shown in the result's `engine` info: per component, and why."""

    backend: str  # the backend that ran the UNet (the bulk of the time)
    reason: str
    components: dict[str, str] = field(default_factory=dict)  # unet / vae_decoder -> backend id
    notes: list[str] = field(default_factory=list)  # conversions, cache hits, mid-run fallbacks
    prepare_seconds: float = 0.0  # converting/compiling before the run (first use of a model)
    # What the backend's own quantization did in this request (OpenVINO int8 activations), replacing the model's
    # load-time report in the result; None: that report stands.
    quantization: dict[str, Any] | None = None
    warmup: bool = False  # the start-up warm-up: a backend keeps nothing of it (no calibration inputs)
    guided: bool = False  # classifier-free guidance: the UNet's batch is [unconditional, conditional] halves

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
    def installed(cls) -> bool:
        package = cls.capabilities.package
        return package is None or importlib.util.find_spec(package) is not None

    @classmethod
    def unavailable(cls, facts: "DeviceFacts") -> str | None:
        """Why this backend cannot run on this machine at all (package, device kind); None when it can."""
        caps = cls.capabilities
        if not cls.installed():
            return f"the {caps.package} package is not installed (pip install 'imgtools-mcp[{caps.extra or caps.package}]')"
        if facts.kind not in caps.device_kinds:
            return f"this build runs {caps.label} on {', '.join(sorted(caps.device_kinds))} only, not on {facts.kind}"
        return None

    @abstractmethod
    def prepare(self, model: "LoadedModel", shape: RequestShape, progress: "Progress | None" = None) -> dict[str, str]:
        """Get ready to serve `shape` on `model` (converting on first use, reported to `progress`); returns
        {component: why not} for each of `components` it cannot serve, which then run on torch. Empty: it serves them all.
        """

    @contextmanager
    def running(self, pipe: Any, model: "LoadedModel", served: list[str], run: BackendRun) -> Iterator[None]:
        """Make `pipe` compute its `served` components with this backend for one run, and leave it as it was after."""
        yield

    def state_bytes(self, model: "LoadedModel") -> int:
        """Memory this backend holds for `model` beyond the torch weights (compiled graphs), for the cache budget."""
        return 0

    def quantization_info(self, model: "LoadedModel") -> dict[str, Any] | None:
        """Quantization this backend applies to `model` as it stands now, for engine_status; None: none of its own."""
        return None

    def describe(self) -> dict[str, Any]:
        return {"id": self.id}

