"""Backends by id (torch, OpenVINO) and the engine's use of them: one per loaded model, torch as every request's fallback.

A new backend is a new module with a `Backend` subclass declaring its `Capabilities`, added to `backend_classes`;
its id, device kinds, families and when `auto` prefers it are then read from that one declaration everywhere
(choice, start-up refusal, engine_status, doctor).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from ..choice import Choice, choose_backend
from .base import Backend, BackendRun, Capabilities, RequestShape

if TYPE_CHECKING:
    from ...config import Settings
    from ..cache import LoadedModel
    from ..device import DeviceFacts
    from ..progress import Progress

__all__ = [
    "Backend",
    "BackendRun",
    "Backends",
    "Capabilities",
    "RequestShape",
    "backend_capabilities",
    "backend_classes",
    "installed_backends",
]

log = logging.getLogger(__name__)


def backend_classes() -> dict[str, type[Backend]]:
    """Every backend by id, torch first; importing them does not import their runtimes (openvino)."""
    from .openvino_backend import OpenVINOBackend
    from .torch_backend import TorchBackend

    registry: dict[str, type[Backend]] = {}
    for cls in (TorchBackend, OpenVINOBackend):
        if cls.id in registry:
            raise ValueError(f"backend id {cls.id!r} registered twice ({registry[cls.id].__name__}, {cls.__name__})")
        registry[cls.id] = cls
    return registry


def backend_capabilities() -> dict[str, Capabilities]:
    """What each backend declares it can run, by id: the table `choose_backend` decides from."""
    return {backend_id: cls.capabilities for backend_id, cls in backend_classes().items()}


def installed_backends() -> frozenset[str]:
    """Backends whose packages can be imported here (torch always); does not import them."""
    return frozenset(backend_id for backend_id, cls in backend_classes().items() if cls.installed())


class Backends:
    """The engine's backends: the configured one checked at start, chosen per model, refused per request."""

    def __init__(self, settings: "Settings", facts: "DeviceFacts") -> None:
        self.settings = settings
        self.facts = facts
        self.classes = backend_classes()
        self.capabilities = {backend_id: cls.capabilities for backend_id, cls in self.classes.items()}
        self.installed = installed_backends()
        self._instances: dict[str, Backend] = {}
        requested = settings.backend
        # An explicit backend that cannot run here stops the server at start, saying what to do instead.
        choose_backend(facts, requested, available=self.installed, family="sd1", capabilities=self.capabilities)
        if requested != "auto":
            why = self.classes[requested].unavailable(facts)
            if why is not None:
                raise ValueError(f"backend {requested!r} cannot run here: {why}; use auto or torch")

    def get(self, backend_id: str) -> Backend:
        if backend_id not in self._instances:
            self._instances[backend_id] = self.classes[backend_id](self.settings, self.facts)
        return self._instances[backend_id]

    @property
    def torch(self) -> Any:
        return self.get("torch")

    def choose(self, family: str) -> Choice[str]:
        """The backend a model of `family` gets: the configured one, or the automatic choice where it can run."""
        choice = choose_backend(
            self.facts, self.settings.backend, available=self.installed, family=family, capabilities=self.capabilities
        )
        if choice.value == "torch":
            return choice
        why = self.classes[choice.value].unavailable(self.facts)
        if why is not None:
            return Choice("torch", f"{choice.value} cannot run here ({why}); torch")
        return choice

    def status(self) -> dict[str, Any]:
        """Each backend with whether it can run here and why not, for engine_status and doctor."""
        report: dict[str, Any] = {}
        for backend_id, cls in self.classes.items():
            why = cls.unavailable(self.facts)
            entry: dict[str, Any] = {"available": why is None}
            if why is not None:
                entry["reason"] = why
            elif backend_id in self._instances:
                entry.update(self._instances[backend_id].describe())
            report[backend_id] = entry
        return report

    @contextmanager
    def running(
        self, model: "LoadedModel", pipe: Any, shape: RequestShape, progress: "Progress | None" = None
    ) -> Iterator[BackendRun]:
        """Run one request on the model's backend where it can, torch for whatever it declines; yields what ran.

        A first use converts the model's components for the backend (minutes for a large model on a CPU),
        reported to `progress` per component.
        """
        backend = self.get(model.backend)
        if not backend.components:
            yield BackendRun(backend.id, model.backend_reason)
            return
        seen = {id(event) for event in model.backend_events}
        started = time.perf_counter()
        refused = backend.prepare(model, shape, progress)
        prepare_seconds = time.perf_counter() - started
        served = [c for c in backend.components if c not in refused]
        components = {c: (backend.id if c in served else "torch") for c in backend.components}
        if not served:
            reasons = "; ".join(dict.fromkeys(refused.values()))
            run = BackendRun("torch", f"{reasons}; this request runs on torch", components)
        elif refused:
            declined = "; ".join(f"{c}: {why}" for c, why in refused.items())
            unet_on = components.get("unet", "torch")
            run = BackendRun(unet_on, f"{model.backend_reason}; on torch for this request: {declined}", components)
        else:
            run = BackendRun(backend.id, model.backend_reason, components)
        run.prepare_seconds = prepare_seconds
        run.warmup = shape.warmup
        run.guided = shape.guidance
        run.notes.extend(_event_text(e) for e in model.backend_events if id(e) not in seen)
        if refused:
            log.info("%s for %s declined %s", backend.id, model.source.name, refused)
        with backend.running(pipe, model, served, run):
            yield run

    def state_bytes(self, model: "LoadedModel") -> int:
        return self.get(model.backend).state_bytes(model)

    def quantization_info(self, model: "LoadedModel") -> dict[str, Any] | None:
        """The backend's own quantization of this model as it stands now (OpenVINO int8 activations), or None."""
        return self.get(model.backend).quantization_info(model)


def _event_text(event: dict[str, Any]) -> str:
    if event["event"] == "converted":
        return f"{event['component']}: converted to {event['backend']} in {event['seconds']:g} s (first use; saved to disk)"
    if event["event"] == "compiled":
        shape = f" for {event['shape']}" if event.get("shape") else ""
        return f"{event['component']}: {event['backend']} IR read from disk and compiled{shape} in {event['seconds']:g} s"
    return f"{event['component']}: {event['event']}"
