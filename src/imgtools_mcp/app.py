"""The objects built once per server (engine, output store, tasks, VLM) that tools reach through their context."""

from __future__ import annotations

from dataclasses import dataclass, field

from .config import Settings
from .engine.engine import Engine
from .images.control_maps import ControlModels
from .images.refs import ImageResolver
from .images.segment import Segmenter
from .runs.context import Resolver, RunContext, StopSwitch
from .runs.progress import ProgressSink
from .store import OutputStore
from .tasks import TaskManager
from .vlm.client import VLMClient


@dataclass
class AppContext:
    settings: Settings
    engine: Engine
    store: OutputStore
    resolver: ImageResolver
    tasks: TaskManager
    vlm: VLMClient | None = None
    control_models: ControlModels = field(init=False)  # depth and pose models, loaded on first use and kept
    segmenter: Segmenter = field(init=False)  # mask_prompt's SAM, loaded on first use and kept

    def __post_init__(self) -> None:
        self.control_models = ControlModels.from_settings(self.settings, offline=self.engine.offline)
        self.segmenter = Segmenter.from_settings(self.settings, offline=self.engine.offline)

    def run_context(
        self,
        sink: ProgressSink | None = None,
        *,
        stop: StopSwitch | None = None,
        ticket: object = None,
        resolver: Resolver | None = None,
    ) -> RunContext:
        """What one run may use: never the task manager or the MCP session."""
        return RunContext(
            settings=self.settings,
            engine=self.engine,
            store=self.store,
            resolver=resolver or self.resolver,
            vlm=self.vlm,
            control_models=self.control_models,
            segmenter=self.segmenter,
            sink=sink,
            stop=stop or StopSwitch(),
            ticket=ticket,
        )
