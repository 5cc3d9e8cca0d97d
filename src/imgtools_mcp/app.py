"""The objects built once per server (engine, output store, jobs, VLM) that tools reach through their context."""

from __future__ import annotations

from dataclasses import dataclass

from .config import Settings
from .engine.engine import Engine
from .images.refs import ImageResolver
from .jobs import JobManager
from .store import OutputStore
from .vlm.client import VLMClient


@dataclass
class AppContext:
    settings: Settings
    engine: Engine
    store: OutputStore
    resolver: ImageResolver
    jobs: JobManager
    vlm: VLMClient | None = None
