"""Errors the engine raises; the tool layer turns each into a one-line tool error."""

from __future__ import annotations


class EngineError(Exception):
    """A failure the caller can act on; the message is shown as is."""


class ModelNotFoundError(EngineError):
    """The requested model is not a local folder, a checkpoint file or a cached/reachable hub id."""


class ModelLoadError(EngineError):
    """The model exists but could not be loaded as a diffusers pipeline."""


class EngineBusyError(EngineError):
    """The queue of waiting requests is full."""


class GenerationCancelled(EngineError):
    """Denoising was stopped at a step boundary because the request was cancelled."""

    def __init__(self, completed_steps: int = 0) -> None:
        super().__init__(f"cancelled after {completed_steps} step(s)")
        self.completed_steps = completed_steps


class OutOfMemoryError(EngineError):
    """The device ran out of memory even after escalating the memory plan."""


class PipelineError(EngineError):
    """The pipeline itself raised (a broken model, a diffusers bug); the request failed, the engine goes on."""


class InvalidRequestError(EngineError):
    """A request the engine cannot run as asked (size, steps, strength, mode); the message starts with the parameter."""

    def __init__(self, param: str, message: str) -> None:
        super().__init__(f"{param}: {message}")
        self.param = param
