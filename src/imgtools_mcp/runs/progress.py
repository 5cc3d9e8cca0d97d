"""One progress relay for every run: denoising steps and slow first-use work from worker threads, and messages
between runs, in order, each notification above the last (MCP requires progress to increase within a call)."""

from __future__ import annotations

import logging
import math
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import anyio
import anyio.from_thread
import anyio.lowlevel

log = logging.getLogger(__name__)

ProgressSink = Callable[[float, float | None, str | None], Awaitable[None]]
"""Where progress goes: an MCP progress notification, or a background task's record."""

_GONE = (anyio.WouldBlock, anyio.BrokenResourceError, anyio.ClosedResourceError)
# Without a step count yet, a share's load messages stay within its first hundredth.
_UNKNOWN_STEPS = 50


class RisingSink:
    """A sink that only ever sends progress above what it sent before; relays that follow one another in one call
    (a sweep's or refine's planning, then its run) share one, so the call's progress never goes back.

    A message at the value already reached (refine's "critiquing" at the end of a round) goes out the smallest
    step above it; once the bar is full there is no value left above it within the total, and it is not sent.
    """

    def __init__(self, sink: ProgressSink) -> None:
        self.sink = sink
        self.sent: float | None = None

    async def __call__(self, progress: float, total: float | None, message: str | None) -> None:
        if self.sent is not None and progress <= self.sent:
            progress = math.nextafter(self.sent, math.inf)
            if total is not None and progress > total:
                log.debug("progress not sent, the bar is full: %s", message)
                return
        self.sent = progress
        await self.sink(progress, total, message)


def rising(sink: ProgressSink | None) -> ProgressSink | None:
    return sink if sink is None or isinstance(sink, RisingSink) else RisingSink(sink)


class ProgressRelay:
    """Carries progress to an async sink, in order, without ever blocking the denoising thread.

    A run with several denoising calls (sweep cells, refine rounds, images) reports one continuous bar:
    `segment(offset, share, prefix)` says where the next call's steps go. Without a share a call's steps
    count one each from `offset`; with one, the call fills `share` units whatever steps it runs (an img2img
    call runs about steps x strength of them).

    What comes before a call's first step (resolving, downloading, loading, converting: `on_progress`, `note`)
    is reported at rising values below that step: a bare generate says "loading ..." at 0.5, 0.67, ... and its
    steps stay 1..N.
    """

    def __init__(self, sink: ProgressSink | None, grand_total: float | None = None) -> None:
        self.sink = rising(sink)
        self.grand_total = grand_total
        self.offset = 0.0
        self.share: float | None = None
        self.prefix = ""
        # The furthest progress sent (in this call, when the sink is shared), so a run can top the bar up at its end.
        self.reported = (self.sink.sent if isinstance(self.sink, RisingSink) else None) or 0.0
        # The coming call's steps and the total to show before any step: known once the request is checked.
        self.expected_steps: int | None = None
        self.expected_total: float | None = None
        self._notes: tuple[float, float, int] | None = None  # (floor, ceiling, count) of the messages before a step
        self._last_note: float | None = None
        self._token: anyio.lowlevel.EventLoopToken | None = None
        self._send, self._receive = anyio.create_memory_object_stream[tuple[float, float | None, str]](max_buffer_size=1024)

    def segment(self, offset: float, share: float | None, prefix: str) -> None:
        self.offset, self.share, self.prefix = offset, share, prefix
        self._last_note = None

    def on_step(self, step: int, total: int) -> None:
        """Called in the worker thread after each step."""
        if self.share is None:
            progress = self.offset + step
        else:
            progress = self.offset + self.share * min(step, total) / max(total, 1)
        overall = self.grand_total if self.grand_total is not None else float(total)
        try:
            anyio.from_thread.run_sync(self._put, progress, overall, f"{self.prefix}step {step} / {total}")
        except _GONE:
            pass  # progress is advisory; a slow or gone client must not stall denoising

    def on_progress(self, message: str, done: float | None = None, total: float | None = None) -> None:
        """The engine's ProgressCallback (downloading, loading, converting), from any thread; never blocks the loop."""
        try:
            anyio.from_thread.run_sync(self.note, message, token=self._token)
        except (*_GONE, RuntimeError) as exc:  # the run is over or the loop gone: progress is advisory
            log.debug("progress not relayed (%s): %s", message, exc)

    def note(self, message: str) -> None:
        """Report what happens before the coming call's first step, a little above the last message and below that step."""
        if self._notes is None or self._last_note != self.reported:  # a step or a post came between: a new run of notes
            floor = max(self.reported, self.offset)
            if self.share is None:
                width = 1.0
            else:  # at most one step in 2 x steps (a second-order sampler calls back twice a step)
                width = self.share / (2 * (self.expected_steps or _UNKNOWN_STEPS))
            ceiling = self.offset + width
            self._notes = (floor, ceiling if ceiling > floor else floor + width, 0)
        floor, ceiling, count = self._notes
        count += 1
        self._notes = (floor, ceiling, count)
        total = self.grand_total if self.grand_total is not None else self.expected_total
        if total is not None:
            ceiling = max(floor, min(ceiling, total))  # never past the total (the sink then holds it back)
        self._put(floor + (ceiling - floor) * count / (count + 1), total, f"{self.prefix}{message}")
        self._last_note = self.reported

    def post(self, progress: float, message: str) -> None:
        """Report progress from the event loop (between calls), queued in order behind the steps already sent."""
        self._put(progress, self.grand_total, message)

    def _put(self, progress: float, total: float | None, message: str) -> None:
        self.reported = max(self.reported, progress)
        try:
            self._send.send_nowait((progress, total, message))
        except _GONE:
            pass

    async def _pump(self) -> None:
        async with self._receive:
            async for progress, total, message in self._receive:
                if self.sink is not None:
                    try:
                        await self.sink(progress, total, message)
                    except Exception as exc:  # the client may have gone; the work goes on
                        log.debug("progress not delivered: %s", exc)

    @asynccontextmanager
    async def running(self) -> AsyncIterator["ProgressRelay"]:
        self._token = anyio.lowlevel.current_token()  # so threads the engine starts itself (download polls) reach the loop
        try:
            async with anyio.create_task_group() as task_group:
                task_group.start_soon(self._pump)
                try:
                    yield self
                finally:
                    # Closing the sender lets the pump drain every queued step before the result is returned.
                    self._send.close()
        except BaseExceptionGroup as group:
            # The pump never raises, so a lone error is the work's own (an EngineError, say): raise it as itself
            # so the tool layer can turn it into a one-line error instead of a generic failure.
            if len(group.exceptions) == 1:
                raise group.exceptions[0]
            raise
