"""One progress relay for every run: denoising steps from the worker thread, and messages between runs, in order."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import anyio
import anyio.from_thread

log = logging.getLogger(__name__)

ProgressSink = Callable[[float, float | None, str | None], Awaitable[None]]
"""Where progress goes: an MCP progress notification, or a background task's record."""

_GONE = (anyio.WouldBlock, anyio.BrokenResourceError, anyio.ClosedResourceError)


class ProgressRelay:
    """Carries progress to an async sink, in order, without ever blocking the denoising thread.

    A run with several denoising calls (sweep cells, refine rounds, images) reports one continuous bar:
    `segment(offset, share, prefix)` says where the next call's steps go. Without a share a call's steps
    count one each from `offset`; with one, the call fills `share` units whatever steps it runs (an img2img
    call runs about steps x strength of them).
    """

    def __init__(self, sink: ProgressSink | None, grand_total: float | None = None) -> None:
        self.sink = sink
        self.grand_total = grand_total
        self.offset = 0.0
        self.share: float | None = None
        self.prefix = ""
        self.reported = 0.0  # the furthest progress sent, so a run can top the bar up at its end
        self._send, self._receive = anyio.create_memory_object_stream[tuple[float, float | None, str]](max_buffer_size=1024)

    def segment(self, offset: float, share: float | None, prefix: str) -> None:
        self.offset, self.share, self.prefix = offset, share, prefix

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
