"""Background tasks: a tool call started with `background: true`, its progress, result, and record on disk.

The public tools call them jobs (`get_job`, `cancel_job`, `job_id`, ids `job-...`); the code calls them tasks,
so the word never collides with the engine's request.
"""

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

from .runs.progress import ProgressSink
from .store import atomic_write

log = logging.getLogger(__name__)

TaskState = Literal["queued", "running", "done", "error", "cancelled", "interrupted"]
FINAL_STATES = ("done", "error", "cancelled", "interrupted")
TaskBody = Callable[[ProgressSink, Any], Awaitable[dict[str, Any]]]
"""A task body reports progress through the sink, runs its engine work on the queue ticket it is given (or None),
and returns the tool result as a JSON-able dict."""


class Admission(Protocol):
    """A place taken in the engine's queue when a task is accepted; the body runs inside it."""

    def __enter__(self) -> Any: ...
    def __exit__(self, *exc_info: Any) -> Any: ...
    def release(self) -> None: ...


@dataclass
class TaskRecord:
    id: str
    tool: str
    state: TaskState = "queued"
    progress: float = 0.0
    total: float | None = None
    message: str | None = None
    result: dict[str, Any] | None = None
    error: str | None = None
    created: float = field(default_factory=time.time)
    updated: float = field(default_factory=time.time)


class TaskManager:
    """Runs task bodies in the server's task group; records live in `<output>/jobs/<id>.json`."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self._tasks: dict[str, TaskRecord] = {}
        self._scopes: dict[str, anyio.CancelScope] = {}
        self._done: dict[str, anyio.Event] = {}
        self._stoppers: dict[str, Callable[[], None]] = {}
        self._stop_requested: set[str] = set()
        self._task_group: TaskGroup | None = None
        self._admit: Callable[[], Admission] | None = None
        self._recover()

    def _recover(self) -> None:
        """A task that was queued or running when the server died is reported interrupted, never silently lost."""
        for path in sorted(self.folder.glob("*.json")):
            try:
                record = TaskRecord(**json.loads(path.read_text()))
            except (OSError, ValueError, TypeError) as exc:
                log.warning("ignoring unreadable task record %s: %s", path.name, exc)
                continue
            if record.state not in FINAL_STATES:
                record.state = "interrupted"
                record.error = "the server stopped while this job was running; finished images are in the output folder"
                self._save(record)
            self._tasks[record.id] = record

    def bind(self, task_group: TaskGroup, admit: Callable[[], Admission] | None = None) -> None:
        """Run tasks in `task_group`; `admit()` takes a queue place per task or raises (busy) before any id is handed out."""
        self._task_group = task_group
        self._admit = admit

    def _save(self, record: TaskRecord) -> None:
        record.updated = time.time()
        try:
            atomic_write(self.folder / f"{record.id}.json", json.dumps(asdict(record), default=str).encode())
        except OSError as exc:
            log.error("could not persist task %s: %s", record.id, exc)

    def get(self, task_id: str) -> TaskRecord | None:
        return self._tasks.get(task_id)

    def list(self) -> list[TaskRecord]:
        return sorted(self._tasks.values(), key=lambda r: r.created)

    def active_count(self) -> int:
        return sum(1 for r in self._tasks.values() if r.state not in FINAL_STATES)

    def start(self, tool: str, body: TaskBody, *, stop: Callable[[], None] | None = None) -> TaskRecord:
        """Run `body` in the background.

        `stop`, when given, is how `cancel` asks the body to wind down instead of cancelling it
        outright: the body stops its remaining work and returns what it finished, and the record
        keeps that result with the state "cancelled" (a sweep's partial grid, for example).
        """
        if self._task_group is None:
            raise RuntimeError("task manager is not running")
        admission = self._admit() if self._admit is not None else None
        record = TaskRecord(id=f"job-{secrets.token_hex(6)}", tool=tool)
        self._tasks[record.id] = record
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

    async def _run(self, record: TaskRecord, body: TaskBody, admission: Admission | None = None) -> None:
        last_saved = 0.0

        async def sink(progress: float, total: float | None, message: str | None) -> None:
            nonlocal last_saved
            record.state = "running"
            record.progress, record.total, record.message = progress, total, message
            # Progress is kept in memory for get_job; the disk copy only needs to be roughly current.
            if time.monotonic() - last_saved > 1.0:
                last_saved = time.monotonic()
                self._save(record)

        scope = self._scopes[record.id]
        try:
            # "queued" until the body reports its first progress (its first denoising step).
            with scope, admission or nullcontext():
                record.result = await body(sink, admission)
                record.state = "cancelled" if record.id in self._stop_requested else "done"
                if record.result.get("isError"):  # it failed partway, and its result lists what it kept
                    record.state = "error"
                    record.error = next((c.get("text") for c in record.result.get("content", []) if c.get("type") == "text"), None)
            if scope.cancelled_caught:
                record.state = "cancelled"
        except Exception as exc:  # a task's failure is its result; it must not take the server down
            record.state = "error"
            record.error = str(exc) or type(exc).__name__
            log.info("task %s failed: %s", record.id, record.error)
        finally:
            self._save(record)
            self._done[record.id].set()

    def cancel(self, task_id: str) -> TaskRecord | None:
        record = self._tasks.get(task_id)
        if record is not None and record.state not in FINAL_STATES and task_id in self._scopes:
            if task_id in self._stoppers:
                self._stop_requested.add(task_id)
                self._stoppers[task_id]()
            else:
                self._scopes[task_id].cancel()
        return record

    async def wait(self, task_id: str) -> TaskRecord | None:
        if task_id in self._done:
            await self._done[task_id].wait()
        return self._tasks.get(task_id)

