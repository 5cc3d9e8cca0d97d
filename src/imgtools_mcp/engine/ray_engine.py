"""The Ray Serve engine client: the MCP front's engine when IMGTOOLS_ENGINE=ray, talking to `ImageEngine` replicas.

`check()` runs here, on the front, by reading the model's configs and LoRA headers with the same code
as the local engine (a config-only Engine that never loads weights): the tool layer checks a request
synchronously before it hands out a task id, a check then costs no round trip and never waits behind
generations for a replica slot, and its error messages are exactly the local engine's. The replica
checks the request again against its own files before running it (the authoritative check), so a
front that sees the same model folders / HF cache as the replicas (one box, or a shared volume on a
cluster) is all this needs.

`generate()` streams the replica's events back: steps go to `on_step` (from a worker thread, as the
local engine calls it), cancellation cancels the Serve request (the replica's engine stops at the next
step), Ray's `max_queued_requests` becomes the usual "engine busy" error, and a replica that dies
before producing anything is retried once; after that the request fails with a clear error.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import pickle
import socket
import time
from typing import Any

import anyio

from .errors import EngineBusyError, EngineError

log = logging.getLogger(__name__)

RAY_MISSING = "IMGTOOLS_ENGINE=ray needs Ray Serve, which is not installed: pip install 'imgtools-mcp[ray]'"
STALE_AFTER_S = 8.0  # a replica silent this long (4 heartbeats) is shown as lost
BUSY_RETRY_S = 0.25


def probe_address(address: str | None, timeout_s: float = 3.0) -> None:
    """Fail in seconds on a host:port nothing listens at; `ray.init` would retry the connection for minutes."""
    if not address or address == "auto":
        return  # "auto" finds the local cluster's address file, or fails at once
    host_port = address.removeprefix("ray://").rsplit("/", 1)[0]
    host, _, port = host_port.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"ray_address: {address!r} is not auto, host:port or ray://host:port (IMGTOOLS_RAY_ADDRESS)")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s).close()
    except OSError as exc:
        raise ValueError(
            f"ray_address: nothing answers at {address} ({exc.strerror or type(exc).__name__}); start the cluster with "
            "`ray start --head` there, or fix IMGTOOLS_RAY_ADDRESS"
        ) from None


def connect(settings: Any) -> Any:
    """Join the Ray cluster at IMGTOOLS_RAY_ADDRESS and find the Serve app; its handle, or one ValueError line."""
    try:
        import ray
        from ray import serve
    except ImportError:
        raise ValueError(RAY_MISSING) from None
    from .ray_deployment import BOARD_NAMESPACE

    address = settings.ray_address
    if not ray.is_initialized():  # else this process is already a driver (tests; engine-serve and a front in one)
        probe_address(address)
        try:
            ray.init(address=address or "auto", log_to_driver=False, namespace=BOARD_NAMESPACE)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            where = address or "auto (the cluster `ray start` started on this machine)"
            detail = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
            raise ValueError(
                f"ray_address: no Ray cluster at {where} ({detail}); start one with `ray start --head` and "
                "deploy the engine with `imgtools-mcp engine-serve` (IMGTOOLS_RAY_ADDRESS)"
            ) from None
    try:
        return serve.get_app_handle(settings.ray_app)
    except Exception as exc:  # Serve raises its own exception types for a missing app or controller
        raise ValueError(
            f"ray_app: no Serve application {settings.ray_app!r} on the Ray cluster ({type(exc).__name__}); "
            "deploy it with `imgtools-mcp engine-serve` (IMGTOOLS_RAY_APP)"
        ) from None


@functools.cache
def _process_lease(ray_job_id: str) -> Any:
    """This process's FrontLease in this Ray session; the lease stands for the process, so fronts in it share one."""
    from .ray_deployment import FrontLease

    return FrontLease.remote()


class RayTicket:
    """A place taken on the front for background work accepted now and run later (sweeps, refine loops).

    Counted among the front's waiting requests until the work's first run is sent to Ray; the work's
    later runs are never refused as busy halfway through (they wait for room instead).
    """

    def __init__(self, engine: "RayEngine") -> None:
        self.engine = engine
        self.counted = True

    def __enter__(self) -> "RayTicket":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()

    def release(self) -> None:
        if self.counted:
            self.counted = False
            self.engine._waiting -= 1


class RayEngine:
    """Sends checked jobs to the Serve app IMGTOOLS_RAY_APP on the Ray cluster at IMGTOOLS_RAY_ADDRESS."""

    def __init__(self, settings: Any, *, handle: Any = None) -> None:
        try:
            import ray

            from . import ray_deployment
        except ImportError:
            raise ValueError(RAY_MISSING) from None
        from .engine import Engine

        self.settings = settings
        self._ray, self._wire = ray, ray_deployment
        # Reads configs and LoRA headers only; on CPU so the front never opens a GPU the replicas need.
        self.checker = Engine(settings.model_copy(update={"device": "cpu", "backend": "auto"}))
        self.handle = handle if handle is not None else connect(settings)
        self._waiting = 0  # sent (or admitted) but not yet on a replica
        self._running = 0
        self._board: Any = None
        self._lease: Any = None

    # ----- what the tools look up before a request exists: the front's own config reading -----

    def resolve(self, spec: str | None, on_progress=None):
        return self.checker.resolve(spec, on_progress)

    async def aresolve(self, spec: str | None, on_progress=None):
        return await self.checker.aresolve(spec, on_progress)

    def resolve_loras(self, loras, family, model_name):
        return self.checker.resolve_loras(loras, family, model_name)

    @property
    def offline(self) -> bool:
        return self.checker.offline

    @property
    def cache(self) -> Any:
        # The front holds no pipelines; engine_status lists what each replica has loaded.
        return self.checker.cache

    def check(self, request, on_progress=None):
        return self.checker.check(request, on_progress)

    async def acheck(self, request, on_progress=None):
        return await self.checker.acheck(request, on_progress)

    # ----- queue -----

    @property
    def queue_length(self) -> int:
        return self._waiting

    @property
    def busy(self) -> bool:
        return self._running > 0

    def admit(self) -> RayTicket:
        """Take a place for background work now, or raise EngineBusyError when IMGTOOLS_MAX_QUEUE already wait."""
        if self._waiting >= self.settings.max_queue:
            raise EngineBusyError(
                f"engine busy: {self._waiting} request(s) already waiting (IMGTOOLS_MAX_QUEUE={self.settings.max_queue}); retry later"
            )
        self._waiting += 1
        return RayTicket(self)

    # ----- generation -----

    async def generate(self, job, on_step=None, *, ticket=None, on_progress=None):
        """Run a checked job on a replica that holds its model (or any, which then loads it); returns a RunOutput."""
        from ray.exceptions import ActorUnavailableError, RayActorError
        from ray.serve.exceptions import BackPressureError, ReplicaUnavailableError

        if ticket is not None and ticket.counted:
            ticket.counted = False  # the ticket's place among the waiting becomes this run's
        else:
            self._waiting += 1
        waiting = True
        model_id = job.source.spec
        sent_at = time.perf_counter()
        retried = False  # a replica that dies before producing anything is retried once
        try:
            while True:
                response = self.handle.options(stream=True, multiplexed_model_id=model_id).generate.remote(
                    job.request, self._front_lease()
                )
                started: dict[str, Any] | None = None
                steps_seen = 0
                try:
                    async for event in response:
                        kind = event["type"]
                        if kind == "started":
                            started = event
                            if waiting:
                                waiting = False
                                self._waiting -= 1
                                self._running += 1
                        elif kind == "step":
                            steps_seen += 1
                            if on_step is not None:
                                await anyio.to_thread.run_sync(on_step, event["step"], event["total"])
                        elif kind == "progress":
                            if on_progress is not None:
                                await anyio.to_thread.run_sync(on_progress, event["message"], event["done"], event["total"])
                        elif kind == "error":
                            raise self._wire.rebuild_error(event)
                        elif kind == "result":
                            return await self._output(event, started, time.perf_counter() - sent_at)
                    raise EngineError("engine replica ended the request without a result; retry")
                except BackPressureError as exc:
                    if ticket is not None and time.perf_counter() - sent_at < self.settings.request_timeout_s:
                        await anyio.sleep(BUSY_RETRY_S)  # admitted work waits for room rather than failing halfway
                        continue
                    queued, limit = (list(exc.args) + [None, None])[:2]
                    raise EngineBusyError(
                        f"engine busy: {queued} request(s) already waiting for the Ray Serve replicas "
                        f"(max_queued_requests={limit}, IMGTOOLS_MAX_QUEUE at deploy); retry later"
                    ) from None
                except (RayActorError, ActorUnavailableError, ReplicaUnavailableError) as exc:
                    where = f"engine replica {started['replica']}" if started else "an engine replica"
                    if steps_seen == 0 and not retried:
                        retried = True
                        log.warning("%s failed before producing anything (%s); retrying once", where, type(exc).__name__)
                        continue
                    raise EngineError(
                        f"{where} stopped during the request after {steps_seen} step(s) ({type(exc).__name__}); "
                        "Ray Serve restarts it; retry the request"
                    ) from None
                except BaseException:
                    # Cancelled (or anything else): cancel the Serve request, which stops the replica's run at
                    # its next step and frees the replica for the next request.
                    response.cancel()
                    raise
        finally:
            if waiting:
                self._waiting -= 1
            elif self._running:
                self._running -= 1

    def _front_lease(self) -> Any:
        # Owned by this process: Ray ends it when this front dies, and each replica running one of its
        # requests then stops that run (Serve would let it finish). One per process and Ray session.
        if self._lease is None:
            self._lease = _process_lease(self._ray.get_runtime_context().get_job_id())
        return self._lease

    async def _output(self, event: dict[str, Any], started: dict[str, Any] | None, seconds: float):
        images = await anyio.to_thread.run_sync(self._wire.decode_pngs, event["pngs"])
        output = event["output"]
        timings = dict(output.timings)
        # What the Ray path added to the replica's own time: routing, transfer, PNG encode/decode.
        replica_s = sum(timings.get(k, 0.0) for k in ("queue_s", "load_s", "generate_s"))
        timings["ray_overhead_s"] = round(max(seconds - replica_s, 0.0), 4)
        engine = output.engine
        if started is not None and dataclasses.is_dataclass(engine) and hasattr(engine, "backend_notes"):
            engine = dataclasses.replace(engine, backend_notes=[*engine.backend_notes, f"ran on Ray Serve replica {started['replica']}"])
        return dataclasses.replace(output, images=images, timings=timings, engine=engine)

    def describe_choices(self, model: Any = None):
        # Work that runs models outside generate() (upscalers) has no replica path yet: refuse in one line.
        raise EngineError(
            "engine: this runs on the local engine only for now (IMGTOOLS_ENGINE=local); with IMGTOOLS_ENGINE=ray, "
            "generate, edit, inpaint, sweep and refine run on the replicas"
        )

    # ----- introspection -----

    def replicas(self) -> list[dict[str, Any]]:
        """Each replica's latest report: id, device, models held (Serve's multiplexing) and loaded, running, waiting."""
        ray = self._ray
        if self._board is None:
            try:
                self._board = ray.get_actor(self._wire.board_name(self.settings.ray_app), namespace=self._wire.BOARD_NAMESPACE)
            except ValueError:
                return []  # no replica has started yet
        try:
            entries = ray.get(self._board.snapshot.remote(), timeout=5)
        except Exception as exc:  # the board may be restarting with its node; status is advisory
            log.warning("replica board unreachable: %s", exc)
            self._board = None
            return []
        for entry in entries:
            entry["state"] = "running" if entry["seen_s_ago"] <= STALE_AFTER_S else "lost"
        return sorted(entries, key=lambda e: (e["state"] != "running", e["replica"]))

    def status(self):
        """engine_status: the first live replica's choices, every replica's models, cache and queue summed, `replicas`."""
        from .status import CacheInfo

        replicas = self.replicas()
        live = [(r, pickle.loads(r["engine"])) for r in replicas if r["state"] == "running"]
        if not live:
            base = self.checker.status()  # nothing reported yet: the front's own view of the default model
            return dataclasses.replace(
                base, device="ray: no replica reporting yet", loaded_models=[], queue_length=self._waiting,
                running=None, running_s=None, max_queue=self.settings.max_queue, replicas=self._public(replicas),
            )
        base = live[0][1]
        # A loaded model's device names its replica: the same model may be loaded on several.
        loaded = [
            dataclasses.replace(m, model=dataclasses.replace(m.model, device=f"{m.model.device}@{r['replica']}"))
            for r, info in live
            for m in info.loaded_models
        ]
        budgets = [info.cache.budget_bytes for _, info in live]
        running = [f"{info.running} on {r['replica']}" for r, info in live if info.running]
        devices = ", ".join(f"{info.device}@{r['replica']}" for r, info in live)
        return dataclasses.replace(
            base,
            device=f"ray: {len(live)} replica(s) ({devices})",
            device_total_bytes=sum(info.device_total_bytes or 0 for _, info in live),
            device_free_bytes=sum(info.device_free_bytes or 0 for _, info in live),
            default_model_plan=None if loaded else base.default_model_plan,
            cache=CacheInfo(
                budget_bytes=None if None in budgets else sum(budgets),
                budget_reason=f"per replica: {base.cache.budget_reason}",
                used_bytes=sum(info.cache.used_bytes for _, info in live),
                evictions=[e for _, info in live for e in info.cache.evictions],
            ),
            loaded_models=loaded,
            queue_length=self._waiting + sum(info.queue_length for _, info in live),
            max_queue=self.settings.max_queue,
            running="; ".join(running) or None,
            running_s=max((info.running_s or 0.0 for _, info in live if info.running), default=None),
            replicas=self._public(replicas),
        )

    @staticmethod
    def _public(replicas: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [{k: v for k, v in r.items() if k != "engine"} for r in replicas]

    async def aclose(self) -> None:
        # Replicas are the cluster's: they keep running (and keep their models) when this front stops.
        await self.checker.aclose()
