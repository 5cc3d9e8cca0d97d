"""Progress of the slow first-use work (hub downloads, loading weights, backend conversion) for a ProgressCallback.

A first call may download gigabytes and convert for minutes; hosts reset their timeouts on progress, so
each of these reports as it goes: downloads as bytes on disk (polled, whichever library writes them),
loading per pipeline component, conversion per converted component.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .request import ProgressCallback

log = logging.getLogger(__name__)

DOWNLOAD_POLL_S = 1.0
# diffusers logs "Loaded <component> as <class> from ..." at INFO after each component it loads.
DIFFUSERS_LOADER_LOGGER = "diffusers.pipelines.pipeline_utils"


class Progress:
    """An optional ProgressCallback that never fails the work it reports on (progress is advisory)."""

    def __init__(self, callback: ProgressCallback | None) -> None:
        self.callback = callback

    def __call__(self, message: str, done: float | None = None, total: float | None = None) -> None:
        if self.callback is None:
            return
        try:
            self.callback(message, done, total)
        except Exception as exc:  # a gone client or a broken relay must not stop a download or a load
            log.debug("progress not delivered (%s): %s", message, exc)


def folder_bytes(folder: Path) -> int:
    """Bytes of the regular files under `folder` (symlinks not followed: the hub's snapshots link to its blobs)."""
    total = 0
    for root, _, files in os.walk(folder):
        for name in files:
            try:
                stat = os.lstat(os.path.join(root, name))
            except OSError:
                continue  # renamed or removed while we looked (a finished .incomplete file)
            if not os.path.islink(os.path.join(root, name)):
                total += stat.st_size
    return total


@contextmanager
def watching_download(folder: Path, label: str, progress: Progress, poll_s: float = DOWNLOAD_POLL_S) -> Iterator[None]:
    """Report the bytes arriving under `folder` every `poll_s` while the block runs; silent when nothing arrives."""
    if progress.callback is None:
        yield
        return
    stop = threading.Event()
    start = folder_bytes(folder) if folder.exists() else 0

    def poll() -> None:
        last = start
        while not stop.wait(poll_s):
            now = folder_bytes(folder) if folder.exists() else 0
            if now != last:
                last = now
                progress(f"downloading {label}: {(now - start) / 2**20:,.1f} MiB so far", float(now - start), None)

    watcher = threading.Thread(target=poll, name="imgtools-download-progress", daemon=True)
    watcher.start()
    try:
        yield
    finally:
        stop.set()
        watcher.join()
        arrived = (folder_bytes(folder) if folder.exists() else 0) - start
        if arrived > 0:
            progress(f"downloaded {label}: {arrived / 2**20:,.1f} MiB", float(arrived), float(arrived))


def pipeline_components(folder: Path) -> list[str]:
    """The components a diffusers folder's model_index.json lists (what from_pretrained loads one by one)."""
    import json

    try:
        index = json.loads((folder / "model_index.json").read_text())
    except (OSError, ValueError):
        return []
    return [name for name, value in index.items() if not name.startswith("_") and isinstance(value, list) and value[0]]


class _ComponentLoaded(logging.Filter):
    """Turns diffusers' per-component "Loaded ..." INFO records from one thread into progress, and keeps them quiet."""

    def __init__(self, thread: int, progress: Progress, label: str, total: int, original_level: int) -> None:
        super().__init__()
        self.thread = thread
        self.progress = progress
        self.label = label
        self.total = total
        self.done = 0
        self.original_level = original_level  # the logger's level before the first of these was installed

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.WARNING:
            return True
        if record.thread == self.thread and record.getMessage().startswith("Loaded "):
            self.done += 1
            component = record.getMessage().split()[1]
            self.progress(f"loading {self.label}: {component} ({self.done}/{self.total})", float(self.done), float(self.total))
        return False  # the INFO records were only enabled for this; nobody else asked for them


@contextmanager
def reporting_component_loads(progress: Progress, label: str, total: int) -> Iterator[None]:
    """While the block loads a diffusers folder in this thread, report each component as diffusers finishes it.

    diffusers' loader offers no per-component hook, but it logs each component it loaded; the records are
    enabled on that one logger for the duration, counted here, and dropped, so nothing extra is printed.
    """
    if progress.callback is None or total <= 0:
        yield
        return
    logger = logging.getLogger(DIFFUSERS_LOADER_LOGGER)
    mine = [f for f in logger.filters if isinstance(f, _ComponentLoaded)]
    original = mine[0].original_level if mine else logger.level
    hook = _ComponentLoaded(threading.get_ident(), progress, label, total, original)
    logger.addFilter(hook)
    logger.setLevel(logging.INFO)
    try:
        yield
    finally:
        logger.removeFilter(hook)
        if not any(isinstance(f, _ComponentLoaded) for f in logger.filters):
            logger.setLevel(original)  # the last loader out puts the level back
