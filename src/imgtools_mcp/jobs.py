"""Background jobs: a tool call started with `background: true`, its progress, result, and record on disk."""

from __future__ import annotations

import json
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

import anyio
from anyio.abc import TaskGroup

from .store import atomic_write

log = logging.getLogger(__name__)

JobState = Literal["queued", "running", "done", "error", "cancelled", "interrupted"]
FINAL_STATES = ("done", "error", "cancelled", "interrupted")
ProgressSink = Callable[[float, float | None, str | None], Awaitable[None]]
JobBody = Callable[[ProgressSink], Awaitable[dict[str, Any]]]
"""A job body reports progress through the sink and returns the tool result as a JSON-able dict."""


class Admission(Protocol):
    """A place taken in the engine's queue when a job is accepted; the body runs inside it."""

    def __enter__(self) -> Any: ...
    def __exit__(self, *exc_info: Any) -> Any: ...
    def release(self) -> None: ...


@dataclass
class JobRecord:
    id: str
    tool: str
    state: JobState = "queued"
    progress: float = 0.0
    total: float | None = None
    message: str | None = None
    result: dict[str, Any] | None = None
    error: str | None = None
    created: float = field(default_factory=time.time)
    updated: float = field(default_factory=time.time)


class JobManager:
    """Runs job bodies in the server's task group; records live in `<output>/jobs/<id>.json`."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self._jobs: dict[str, JobRecord] = {}
        self._scopes: dict[str, anyio.CancelScope] = {}
        self._done: dict[str, anyio.Event] = {}
        self._stoppers: dict[str, Callable[[], None]] = {}
        self._stop_requested: set[str] = set()
        self._task_group: TaskGroup | None = None
        self._admit: Callable[[], Admission] | None = None
        self._recover()

    def _recover(self) -> None:
        """A job that was queued or running when the server died is reported interrupted, never silently lost."""
        for path in sorted(self.folder.glob("*.json")):
            try:
                record = JobRecord(**json.loads(path.read_text()))
            except (OSError, ValueError, TypeError) as exc:
                log.warning("ignoring unreadable job record %s: %s", path.name, exc)
                continue
            if record.state not in FINAL_STATES:
                record.state = "interrupted"
                record.error = "the server stopped while this job was running; finished images are in the output folder"
                self._save(record)
            self._jobs[record.id] = record

    def bind(self, task_group: TaskGroup, admit: Callable[[], Admission] | None = None) -> None:
        """Run jobs in `task_group`; `admit()` takes a queue place per job or raises (busy) before any id is handed out."""
        self._task_group = task_group
        self._admit = admit

    def _save(self, record: JobRecord) -> None:
        record.updated = time.time()
        try:
            atomic_write(self.folder / f"{record.id}.json", json.dumps(asdict(record), default=str).encode())
        except OSError as exc:
            log.error("could not persist job %s: %s", record.id, exc)

    def get(self, job_id: str) -> JobRecord | None:
        return self._jobs.get(job_id)

    def list(self) -> list[JobRecord]:
        return sorted(self._jobs.values(), key=lambda r: r.created)

    def active_count(self) -> int:
        return sum(1 for r in self._jobs.values() if r.state not in FINAL_STATES)

    def start(self, tool: str, body: JobBody, *, stop: Callable[[], None] | None = None) -> JobRecord:
        """Run `body` in the background.

        `stop`, when given, is how `cancel` asks the body to wind down instead of cancelling it
        outright: the body stops its remaining work and returns what it finished, and the record
        keeps that result with the state "cancelled" (a sweep's partial grid, for example).
        """
        if self._task_group is None:
            raise RuntimeError("job manager is not running")
        admission = self._admit() if self._admit is not None else None
        record = JobRecord(id=f"job-{secrets.token_hex(6)}", tool=tool)
        self._jobs[record.id] = record
        self._scopes[record.id] = anyio.CancelScope()
        self._done[record.id] = anyio.Event()
        if stop is not None:
            self._stoppers[record.id] = stop
        self._save(record)
        try:
            self._task_group.start_soon(self._run, record, body, admission)
        except BaseException:
            if admission is not None:
                admission.release()
            raise
        return record

    async def _run(self, record: JobRecord, body: JobBody, admission: Admission | None = None) -> None:
        last_saved = 0.0

        async def sink(progress: float, total: float | None, message: str | None) -> None:
            nonlocal last_saved
            record.state = "running"
            record.progress, record.total, record.message = progress, total, message
            # Progress is kept in memory for get_job; the disk copy only needs to be roughly current.
            if time.monotonic() - last_saved > 1.0:
                last_saved = time.monotonic()
                self._save(record)

        # The job's queue ticket reaches the engine with its progress sink (tasks.py passes it to the body instead).
        sink.ticket = admission  # type: ignore[attr-defined]
        scope = self._scopes[record.id]
        try:
            # "queued" until the body reports its first progress (its first denoising step).
            with scope, admission or nullcontext():
                record.result = await body(sink)
                record.state = "cancelled" if record.id in self._stop_requested else "done"
            if scope.cancelled_caught:
                record.state = "cancelled"
        except Exception as exc:  # a job's failure is its result; it must not take the server down
            record.state = "error"
            record.error = str(exc) or type(exc).__name__
            log.info("job %s failed: %s", record.id, record.error)
        finally:
            self._save(record)
            self._done[record.id].set()

    def cancel(self, job_id: str) -> JobRecord | None:
        record = self._jobs.get(job_id)
        if record is not None and record.state not in FINAL_STATES and job_id in self._scopes:
            if job_id in self._stoppers:
                self._stop_requested.add(job_id)
                self._stoppers[job_id]()
            else:
                self._scopes[job_id].cancel()
        return record

    async def wait(self, job_id: str) -> JobRecord | None:
        if job_id in self._done:
            await self._done[job_id].wait()
        return self._jobs.get(job_id)


class StopSwitch:
    """How cancel_job winds a long job down: the running step stops, the rest is skipped, what was made is kept.

    The job's body attaches the cancel scope of the work in progress; a stop requested before
    that is remembered and applied on attach.
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
