"""The `ImageEngine` Ray Serve deployment: each replica is today's Engine on its own device, models multiplexed by id.

A request carries the typed `EngineRequest`; the replica checks it against its own files (the
authoritative check), runs it on its Engine and streams back events: `started`, one `step` per
denoising step, `progress` while a model loads, then `result` (PNG bytes + the RunOutput without
images) or `error` (the EngineError's class and message). The front (ray_engine.py) saves the
images to its store, so ids, infotext and sidecars are exactly as with the local engine.

Ray is imported here at module level: import this module only when Ray Serve is in use.
"""

from __future__ import annotations

import asyncio
import dataclasses
import io
import logging
import os
import pickle
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

try:
    import ray
    from ray import serve
except ImportError as exc:  # the `ray` extra is optional; say how to get it in one line
    raise ImportError("Ray Serve is not installed: pip install 'imgtools-mcp[ray]'") from exc

from PIL import Image

from . import errors as engine_errors
from .errors import EngineError

log = logging.getLogger(__name__)

DEPLOYMENT = "ImageEngine"
BOARD_NAMESPACE = "imgtools"
HEARTBEAT_S = 2.0


@dataclass(frozen=True)
class DeploymentSize:
    """What each replica reserves and how many requests Ray lets in; the knobs to size a box or a cluster with."""

    replicas: int = 1
    num_gpus: float = 0.0  # 1 per replica on GPU boxes: Ray then shows that replica only its own GPU
    num_cpus: float = 1.0
    models_per_replica: int = 2  # Serve's multiplexing LRU; the Engine's memory budget still applies inside it
    torch_threads: int | None = None  # pin each CPU replica's torch to this many threads (None: Ray's OMP default)
    max_ongoing_requests: int = 1  # one denoising job per device; the rest wait at the router, which routes by model
    max_queued_requests: int = 16  # per front; beyond it a request is refused as busy (IMGTOOLS_MAX_QUEUE)


def board_name(app_name: str) -> str:
    return f"{app_name}:replicas"


# ----- wire format -----


def encode_pngs(images: list[Image.Image]) -> list[bytes]:
    """Lossless, so the front's PNG has exactly the replica's pixels; level 1 keeps encoding off the critical path."""
    out = []
    for image in images:
        buffer = io.BytesIO()
        image.save(buffer, format="PNG", compress_level=1)
        out.append(buffer.getvalue())
    return out


def decode_pngs(blobs: list[bytes]) -> list[Image.Image]:
    images = []
    for blob in blobs:
        image = Image.open(io.BytesIO(blob))
        image.load()
        images.append(image)
    return images


def error_event(exc: EngineError) -> dict[str, Any]:
    # Sent as fields rather than pickled: some EngineErrors take constructor arguments pickle cannot replay.
    return {"type": "error", "error": type(exc).__name__, "message": str(exc), "attrs": dict(vars(exc))}


def rebuild_error(event: dict[str, Any]) -> EngineError:
    """The replica's EngineError as the same class on the front, with the same message and attributes."""
    cls = getattr(engine_errors, event.get("error", ""), None)
    if not (isinstance(cls, type) and issubclass(cls, EngineError)):
        cls = EngineError
    exc = cls.__new__(cls)
    Exception.__init__(exc, event["message"])
    for key, value in event.get("attrs", {}).items():
        setattr(exc, key, value)
    return exc


# ----- the front's lease: how a replica notices that the front which sent a request is gone -----


@ray.remote(num_cpus=0)
class FrontLease:
    """Owned by one front (not detached), so Ray ends it when that front's process dies; requests carry its handle.

    Serve does not cancel a streaming request whose caller died; a replica that sees the lease gone
    cancels the run itself, and its engine stops at the next step.
    """

    def alive(self) -> bool:
        return True


LEASE_CHECK_S = 1.0


async def _watch_lease(lease: Any, run: "asyncio.Task[Any]") -> None:
    from ray.exceptions import ActorUnavailableError, RayActorError

    while not run.done():
        await asyncio.sleep(LEASE_CHECK_S)
        try:
            await asyncio.wait_for(lease.alive.remote(), timeout=10)
        except ActorUnavailableError:
            continue  # a network blip or a busy node is not proof that the front is gone
        except RayActorError:
            log.warning("the front that sent this request is gone; stopping the run at its next step")
            run.cancel()
            return
        except asyncio.TimeoutError:
            continue


# ----- the board of replicas, for engine_status -----


@ray.remote(num_cpus=0)
class ReplicaBoard:
    """Latest status of each replica, pushed by the replicas themselves; Serve has no call that reaches every replica."""

    def __init__(self) -> None:
        self.entries: dict[str, tuple[float, dict[str, Any]]] = {}

    def report(self, replica_id: str, status: dict[str, Any]) -> None:
        self.entries[replica_id] = (time.time(), status)

    def leave(self, replica_id: str) -> None:
        self.entries.pop(replica_id, None)

    def snapshot(self, forget_after_s: float = 60.0) -> list[dict[str, Any]]:
        now = time.time()
        for replica_id in [r for r, (at, _) in self.entries.items() if now - at > forget_after_s]:
            del self.entries[replica_id]  # long dead; Ray has replaced it
        return [{**status, "seen_s_ago": round(now - at, 1)} for at, status in self.entries.values()]


def get_board(app_name: str):
    """The board actor, created by whichever replica starts first; detached so it outlives the deploying process."""
    return ReplicaBoard.options(
        name=board_name(app_name), namespace=BOARD_NAMESPACE, lifetime="detached", get_if_exists=True
    ).remote()


# ----- the deployment -----


class _HeldModel:
    """What Serve's multiplexing LRU holds per model id; unloading it evicts the pipeline from the Engine's cache."""

    def __init__(self, replica: "ImageEngineReplica", model_id: str) -> None:
        self.replica = replica
        self.model_id = model_id
        # An instance attribute, not a method: Serve awaits it on unload, the garbage collector never calls it.
        self.__del__ = self._unload

    async def _unload(self) -> None:
        await self.replica.unload(self.model_id)


class ImageEngineReplica:
    """One replica: an Engine on the device Ray gave it. Wrapped by `serve.deployment` in `image_engine_app`."""

    def __init__(self, settings_fields: dict[str, Any], app_name: str, torch_threads: int | None = None) -> None:
        from ..config import Settings
        from .engine import Engine

        if torch_threads:
            import torch

            torch.set_num_threads(torch_threads)
        self.settings = Settings(**settings_fields)
        self.engine = Engine(self.settings)
        from .choice import Choice
        from .warmup import Warmup

        self.engine.warmup = Warmup(Choice(False, "a Ray Serve replica loads a model when a request for it arrives "
                                           "(Serve multiplexes models by id)"))  # fmt: skip
        context = serve.get_replica_context()
        self.replica_id = context.replica_id.unique_id
        self.node_ip = ray.util.get_node_ip_address()
        self.models: list[str] = []  # Serve's multiplexed ids held here, most recent last
        self.served = 0
        self.started_at = time.time()
        self._board = get_board(app_name)
        self._stop = threading.Event()
        self._changed = threading.Event()
        threading.Thread(target=self._heartbeat, name="imgtools-board", daemon=True).start()

    # --- status ---

    def status(self) -> dict[str, Any]:
        info = self.engine.status()
        return {
            "replica": self.replica_id,
            "pid": os.getpid(),
            "node_ip": self.node_ip,
            "device": info.device,
            "device_name": info.device_name,
            "dtype": info.dtype,
            "backend": info.backend,
            "models": list(self.models),
            "loaded": [m.model.name for m in info.loaded_models],
            "running": info.running,
            "running_s": info.running_s,
            "waiting": info.queue_length,
            "served": self.served,
            # The whole EngineStatusInfo, pickled here and unpickled by the front: the board stays package-free.
            "engine": pickle.dumps(info),
        }

    def _heartbeat(self) -> None:
        # Pushed on every change and every HEARTBEAT_S, so a replica that stops reporting is known to be gone.
        while not self._stop.is_set():
            try:
                self._board.report.remote(self.replica_id, self.status())
            except Exception as exc:  # the board may be restarting; the next beat reports again
                log.debug("replica status not reported: %s", exc)
            self._changed.wait(HEARTBEAT_S)
            self._changed.clear()

    # --- models ---

    async def hold(self, model_id: str) -> _HeldModel:
        """What the deployment's multiplexed `get_model` returns (see `_deployment_class`)."""
        # Loading itself happens inside the device queue on first use; holding the id here is what routes
        # later requests for this model to this replica.
        self.models.append(model_id)
        self._changed.set()
        return _HeldModel(self, model_id)

    async def unload(self, model_id: str) -> None:
        """Serve dropped this model from the replica's LRU: evict it too, once the device is free (never mid-run)."""
        if model_id in self.models:
            self.models.remove(model_id)
        try:
            source, _ = await self.engine.aresolve(model_id)
            await self.engine.queue.run(
                f"unload:{source.name}",
                lambda cancel: self.engine.cache.evict(source.key, reason="dropped from the replica's model LRU"),
            )
        except EngineError as exc:
            log.warning("could not unload %s: %s", model_id, exc)
        self._changed.set()

    # --- requests ---

    async def generate(self, request: Any, lease: Any = None) -> AsyncIterator[dict[str, Any]]:
        """Check and run one EngineRequest; yields started, step/progress events, then result or error.

        `lease` is the sending front's FrontLease: when it dies, the run is stopped at the next step.
        """
        model_id = serve.get_multiplexed_model_id()
        if model_id:
            await self.get_model(model_id)  # type: ignore[attr-defined]  # added by _deployment_class
        yield {"type": "started", "replica": self.replica_id, "pid": os.getpid(), "device": self.engine.device}
        loop = asyncio.get_running_loop()
        events: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()

        def on_step(step: int, total: int) -> None:
            loop.call_soon_threadsafe(events.put_nowait, {"type": "step", "step": step, "total": total})

        def on_progress(message: str, done: float | None, total: float | None) -> None:
            loop.call_soon_threadsafe(events.put_nowait, {"type": "progress", "message": message, "done": done, "total": total})

        async def run() -> Any:
            job = await self.engine.acheck(request, on_progress)  # a first use may download the model here
            self._changed.set()
            return await self.engine.generate(job, on_step, on_progress=on_progress)

        task = asyncio.ensure_future(run())
        task.add_done_callback(lambda _: events.put_nowait(None))
        watch = asyncio.ensure_future(_watch_lease(lease, task)) if lease is not None else None
        try:
            while (event := await events.get()) is not None:
                yield event
            if task.cancelled():  # by the lease watch: nobody is listening any more
                yield error_event(EngineError("cancelled: the front that sent this request went away"))
                return
            try:
                output = task.result()
            except EngineError as exc:
                yield error_event(exc)
                return
            pngs = await asyncio.to_thread(encode_pngs, output.images)
            self.served += 1
            yield {"type": "result", "pngs": pngs, "output": dataclasses.replace(output, images=[])}
        finally:
            if watch is not None:
                watch.cancel()
            if not task.done():
                # Cancelled, or the caller went away: the engine sets its cancel event and frees the
                # device at the next step; waiting here keeps the next request off a dying run.
                task.cancel()
                await asyncio.wait([task])
            self._changed.set()

    def __del__(self) -> None:
        self._stop.set()
        self._changed.set()
        try:
            self._board.leave.remote(self.replica_id)
        except Exception as exc:  # Ray may already be shutting down; the board forgets stale entries anyway
            log.debug("replica %s not removed from the board: %s", self.replica_id, exc)


def _deployment_class(models_per_replica: int) -> type[ImageEngineReplica]:
    # Serve's multiplexing LRU size is fixed when the method is decorated, so the class is made per size.
    class ImageEngine(ImageEngineReplica):
        @serve.multiplexed(max_num_models_per_replica=models_per_replica)
        async def get_model(self, model_id: str) -> _HeldModel:
            return await self.hold(model_id)

    return ImageEngine


def image_engine_app(settings: Any, size: DeploymentSize, app_name: str):
    """The bound Serve application: `size.replicas` ImageEngine replicas built from these settings."""
    fields = settings.model_dump()
    # A replica waits for its device behind at most max_ongoing_requests - 1 others; Ray's router holds the rest.
    fields["max_queue"] = max(fields.get("max_queue", 0), size.max_ongoing_requests)
    deployment = serve.deployment(
        _deployment_class(size.models_per_replica),
        name=DEPLOYMENT,
        num_replicas=size.replicas,
        ray_actor_options={"num_cpus": size.num_cpus, "num_gpus": size.num_gpus},
        max_ongoing_requests=size.max_ongoing_requests,
        max_queued_requests=size.max_queued_requests,
        health_check_period_s=2,
        health_check_timeout_s=30,
    )
    return deployment.bind(fields, app_name, size.torch_threads)


def deploy(settings: Any, size: DeploymentSize, *, app_name: str | None = None, blocking: bool = False):
    """Start Serve (handles only, no HTTP proxy) on the connected Ray cluster and run the app; returns its handle."""
    app_name = app_name or settings.ray_app
    serve.start(proxy_location="Disabled")
    return serve.run(image_engine_app(settings, size, app_name), name=app_name, route_prefix=None, blocking=blocking)


def build_app(args: dict[str, Any]):
    """Serve config / KubeRay entry point (`import_path: imgtools_mcp.engine.ray_deployment:build_app`).

    Settings come from the replicas' IMGTOOLS_* environment (the config's `runtime_env.env_vars` or the
    container's); `args` size the deployment: replicas, num_gpus, num_cpus, models_per_replica,
    torch_threads, max_ongoing_requests, max_queued_requests, app_name.
    """
    from ..config import Settings

    settings = Settings()
    known = {f.name: f.type for f in dataclasses.fields(DeploymentSize)}
    unknown = sorted(set(args) - set(known) - {"app_name"})
    if unknown:
        raise ValueError(f"args: unknown {', '.join(unknown)}; allowed: {', '.join(sorted(known))}, app_name")
    numbers = {"replicas": int, "models_per_replica": int, "torch_threads": int, "max_ongoing_requests": int,
               "max_queued_requests": int, "num_gpus": float, "num_cpus": float}
    size = DeploymentSize(**{k: numbers[k](v) for k, v in args.items() if k in known})
    return image_engine_app(settings, size, str(args.get("app_name", settings.ray_app)))
