"""The device queue: one job on the device at a time, a bounded FIFO of waiters, and tickets for work accepted early.

A request waits in arrival order (anyio's Lock is FIFO). When `max_queue` requests already wait while
the device is busy, a new one is refused at once (EngineBusyError) rather than left hanging. A
background task takes its place when it is accepted (`admit()` → QueueTicket) and passes the ticket
to each of its runs: until its first run reaches the device the ticket counts as waiting, exactly
like a foreground request, so accepting tasks can never overfill the queue; once admitted, its later
runs (sweep cells, refine rounds) are never refused as busy halfway through.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import TypeVar

import anyio

from .errors import EngineBusyError, EngineError

T = TypeVar("T")


class QueueTicket:
    """A place in a DeviceQueue taken when background work is accepted; pass it to every run of that work.

    A context manager so the place is given back however the work ends (failed early, cancelled,
    never started) if none of its runs reached the device.
    """

    def __init__(self, queue: "DeviceQueue") -> None:
        self.queue = queue
        self.counted = True  # still counted among the waiters (no run has taken the place over yet)

    def __enter__(self) -> "QueueTicket":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()

    def release(self) -> None:
        """Give the place back if the work never reached the device; harmless to call again."""
        self.queue.release(self)


class DeviceQueue:
    """Serialises runs on one device; counts waiters for the busy refusal and for /health and engine_status."""

    def __init__(self, max_queue: int, request_timeout_s: float) -> None:
        self.max_queue = max_queue
        self.request_timeout_s = request_timeout_s
        self._lock = anyio.Lock()
        self.waiting = 0
        self.running: str | None = None  # the label of the run on the device ("mode:model")
        self.running_since = 0.0

    @property
    def busy(self) -> bool:
        return self.running is not None

    def running_seconds(self) -> float | None:
        return round(time.monotonic() - self.running_since, 1) if self.running else None

    def _refuse_if_full(self) -> None:
        if self.waiting >= self.max_queue and self._lock.locked():
            raise EngineBusyError(
                f"engine busy: {self.waiting} request(s) already waiting (IMGTOOLS_MAX_QUEUE={self.max_queue}); retry later"
            )

    def admit(self) -> QueueTicket:
        """Take a place now for work that will run later, or raise EngineBusyError."""
        self._refuse_if_full()
        self.waiting += 1
        return QueueTicket(self)

    def release(self, ticket: QueueTicket) -> None:
        if ticket.counted:
            ticket.counted = False
            self.waiting -= 1

    async def run(
        self, label: str, fn: Callable[[threading.Event], T], *, ticket: QueueTicket | None = None
    ) -> tuple[T, float]:
        """Wait in the FIFO for the device, then run `fn` in a worker thread; returns (result, seconds waited).

        A cancelled caller sets the event `fn` polls at each step, and the device is released only
        once the thread has really stopped, so the next run never overlaps a dying one. A caller
        cancelled while waiting leaves the queue at once. A run over `request_timeout_s` is stopped
        the same way and fails with an EngineError.
        """
        if ticket is not None and ticket.queue is not self:
            raise ValueError("ticket: taken from another engine's queue")
        if ticket is None:
            self._refuse_if_full()
        queued_at = time.perf_counter()
        if ticket is not None and ticket.counted:
            ticket.counted = False  # the ticket's place in the count becomes this wait's
        else:
            self.waiting += 1
        try:
            await self._lock.acquire()
        finally:
            self.waiting -= 1
        try:
            waited = time.perf_counter() - queued_at
            self.running = label
            self.running_since = time.monotonic()
            return await self._run_in_thread(fn), waited
        finally:
            self.running = None
            self._lock.release()

    async def _run_in_thread(self, fn: Callable[[threading.Event], T]) -> T:
        cancel = threading.Event()
        finished = threading.Event()

        def work() -> T:
            try:
                return fn(cancel)
            finally:
                finished.set()

        try:
            with anyio.fail_after(self.request_timeout_s):
                return await anyio.to_thread.run_sync(work, abandon_on_cancel=True)
        except TimeoutError:
            cancel.set()
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(finished.wait)
            raise EngineError(
                f"generation timed out after {self.request_timeout_s:g} s (IMGTOOLS_REQUEST_TIMEOUT_S)"
            ) from None
        except anyio.get_cancelled_exc_class():
            cancel.set()
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(finished.wait)
            raise
