"""Warm-up at start (IMGTOOLS_WARMUP): load the default model and run one short generation at its native size.

Where the torch backend compiles the denoiser (IMGTOOLS_TORCH_COMPILE), each size compiles on its first
request, and with CUDA graphs that first request is the slow one by minutes. The warm-up moves that cost
to server start: once the server is up it loads the default model in the background and runs
`WARMUP_STEPS` steps at the family's native size with one image and the family's default guidance (the
shape an assistant's first plain `generate` has), so the compiled graph and its CUDA graphs exist
before anyone asks. On OpenVINO the same pass converts (first use) and compiles the UNet for that shape.

It goes through the device queue like any request, labelled `warmup:<model>`: a request that arrives
meanwhile waits for it, as it would have waited for the load. Its images are dropped; it never
downloads (a default model that is not on disk is skipped, and the first request downloads it), and
OpenVINO's int8 calibration does not keep its UNet inputs (a made-up prompt is poor calibration data).

A model loaded later, by a request at another size (or the default model, when the start skipped it because
it was not on disk yet), gets the same pass once the device is idle: its native size compiles in the
background after the load, not on the first native-size request. It waits until no request has run or
waited for `IDLE_QUIET_S`, never loads a model again (one evicted meanwhile is left alone), and is skipped
when a request has already run that shape. A request that arrives while it runs waits for its few steps.
engine_status lists these under the warm-up's `later`.

`plan_warmup` is pure (the setting and the engine's choices in, a `Choice` out); `Warmup` is what
engine_status and doctor show: whether it runs, why, and how far it got.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from .choice import Choice

WARMUP_STEPS = 3  # CUDA graph trees record on a compiled graph's second call and replay from the third
WARMUP_PROMPT = "warm-up"
IDLE_POLL_S = 0.25  # how often a warm-up after load looks whether the device is idle
IDLE_QUIET_S = 1.0  # how long the device must have been idle before a warm-up after load takes it
LATER_KEPT = 8  # warm-ups of models loaded after start that engine_status lists, newest last
COMPILED_MODES = ("cudagraphs", "regional")


def plan_warmup(setting: str, *, compile_mode: str, backend: str, engine: str = "local") -> Choice[bool]:
    """Whether this server warms its default model up at start, and why."""
    if engine != "local":
        return Choice(False, f"IMGTOOLS_ENGINE={engine}: each engine replica loads its models itself")
    if setting == "off":
        return Choice(False, "IMGTOOLS_WARMUP=off: the default model loads (and compiles) on its first request")
    if setting == "on":
        return Choice(True, "IMGTOOLS_WARMUP=on: the default model loads and runs once at its native size at start")
    if backend == "torch" and compile_mode in COMPILED_MODES:
        return Choice(True, f"IMGTOOLS_WARMUP=auto: the torch backend compiles the denoiser ({compile_mode}) once "
                      "per size, so the native size is compiled at start instead of on the first request")  # fmt: skip
    if backend == "torch":
        first = f"the torch backend compiles nothing here (torch compile {compile_mode}), so a first request pays the load only"
    else:
        first = f"on {backend} a first request pays the load and a few seconds' compile of its shape"
    return Choice(False, f"IMGTOOLS_WARMUP=auto: {first}, and loading at start would hold the model's memory before "
                  "anything asks for it; IMGTOOLS_WARMUP=on loads and warms it anyway")  # fmt: skip


@dataclass
class Warmup:
    """The warm-up as it stands: off | pending | running | ready | skipped | failed."""

    choice: Choice[bool]
    state: str = ""
    model: str | None = None
    size: str | None = None
    detail: str = ""
    seconds: float | None = None
    timings: dict[str, float] = field(default_factory=dict)
    _started: float = 0.0
    later: list["Warmup"] = field(default_factory=list, repr=False)  # models loaded after start, newest last

    def __post_init__(self) -> None:
        self.state = self.state or ("pending" if self.choice.value else "off")

    def start(self, model: str, size: str) -> None:
        self.state, self.model, self.size = "running", model, size
        self.detail = f"loading {model} and running {WARMUP_STEPS} steps at {size}"
        self._started = time.perf_counter()

    def progress(self, message: str) -> None:
        if self.state == "running":
            self.detail = message

    def finish(self, timings: dict[str, float], notes: list[str], done: str | None = None) -> None:
        self.state, self.seconds = "ready", round(time.perf_counter() - self._started, 2)
        self.timings = dict(timings)
        noted = "; ".join(notes)
        self.detail = (done or f"{self.model} loaded and run at {self.size}") + (f" ({noted})" if noted else "")

    def skip(self, why: str) -> None:
        self.state, self.detail = "skipped", why

    def fail(self, why: str) -> None:
        self.state, self.detail = "failed", why
        if self._started:
            self.seconds = round(time.perf_counter() - self._started, 2)

    def as_dict(self) -> dict[str, Any]:
        report: dict[str, Any] = {"enabled": self.choice.value, "reason": self.choice.reason, "state": self.state}
        for key in ("model", "size", "detail", "seconds"):
            if getattr(self, key):
                report[key] = getattr(self, key)
        if self.timings:
            report["timings"] = dict(self.timings)
        if self.later:
            report["later"] = [{key: value for key, value in later.as_dict().items() if key != "enabled"} for later in self.later]
        return report

    def add_later(self, model: str, reason: str) -> "Warmup":
        later = Warmup(Choice(True, reason))
        later.model = model
        self.later.append(later)
        del self.later[:-LATER_KEPT]
        return later

