"""Step caches for a request's `speed`: reuse the transformer's work between similar denoising steps, and count it."""

from __future__ import annotations

import contextlib
import inspect
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

log = logging.getLogger(__name__)

SPEEDS = ("quality", "balanced", "fast")
# diffusers' First Block Cache: when the first block's residual changed by less than this fraction since the
# last fully computed step, the other blocks' cached residuals are reused. ParaAttention uses 0.08 on FLUX.1
# for ~1.8x with little visible change; diffusers' own example uses 0.2, which reuses far more and drifts.
FBC_THRESHOLDS = {"balanced": 0.08, "fast": 0.2}
# The ModuleLists diffusers' cache hooks treat as transformer blocks (diffusers.hooks._common).
_BLOCK_LISTS = ("transformer_blocks", "single_transformer_blocks", "layers", "blocks")


def check_speed(value: Any) -> str:
    """The one speed value a request may carry; anything else is a one-line error naming `speed`."""
    if value not in SPEEDS:
        from .errors import InvalidRequestError

        raise InvalidRequestError("speed", f"must be one of {', '.join(SPEEDS)}; got {value!r}")
    return value


@dataclass
class StepCacheRun:
    """What a cache did in one call: denoiser passes (one per step, two with true CFG) computed vs reused."""

    speed: str
    method: str  # first_block_cache | none
    reason: str
    threshold: float | None = None
    passes: int = 0
    computed: int = 0
    _computing: bool = field(default=False, repr=False)

    def as_dict(self) -> dict[str, Any]:
        info: dict[str, Any] = {"speed": self.speed, "method": self.method, "reason": self.reason}
        if self.method != "none":
            info.update(threshold=self.threshold, denoiser_passes=self.passes, computed=self.computed,
                        reused=self.passes - self.computed)
        return info


def _tail_block(transformer: torch.nn.Module) -> torch.nn.Module | None:
    blocks = [b for name, child in transformer.named_children()
              if name in _BLOCK_LISTS and isinstance(child, torch.nn.ModuleList) for b in child]
    return blocks[-1] if len(blocks) >= 2 else None


def _marks_cache_context(pipe: Any) -> bool:
    # Pipelines that call `transformer.cache_context(...)` per pass keep one cache state per guidance branch.
    try:
        return "cache_context(" in inspect.getsource(type(pipe).__call__)
    except (OSError, TypeError):
        return False


@contextlib.contextmanager
def step_cache(pipe: Any, speed: str, *, single_pass: bool) -> Iterator[StepCacheRun | None]:
    """Enable the cache `speed` asks for on `pipe.transformer` for one call, count passes, and remove it after.

    `single_pass`: the family runs one transformer pass per step (no CFG), so one shared cache state is right
    even when the pipeline does not mark its passes. Yields None at `quality`: plain requests run untouched.
    """
    if speed == "quality":
        yield None
        return
    transformer = getattr(pipe, "transformer", None)
    if transformer is None or getattr(pipe, "unet", None) is not None:
        yield StepCacheRun(speed, "none", "UNet families run at quality: no step cache for UNets in this build")
        return
    tail = _tail_block(transformer)
    marks = _marks_cache_context(pipe)
    if tail is None or not hasattr(transformer, "enable_cache"):
        yield StepCacheRun(speed, "none", f"{type(transformer).__name__} has no block list diffusers' caches can use")
        return
    if not marks and not single_pass:
        yield StepCacheRun(speed, "none", f"{type(pipe).__name__} runs guided passes it does not mark for caches; ran at quality")
        return
    from diffusers.hooks import FirstBlockCacheConfig

    run = StepCacheRun(speed, "first_block_cache", "the later blocks are reused while the first block's output "
                       "barely changes", threshold=FBC_THRESHOLDS[speed])

    def pass_started(module: Any, args: Any) -> None:
        run.passes += 1
        run._computing = False

    def tail_ran(module: Any, args: Any) -> None:
        if not run._computing:  # a reused pass never enters the tail block's own forward
            run._computing = True
            run.computed += 1

    # The tail block's first submodule runs only inside the block's own forward, which a reused pass skips.
    leaf = next(m for m in tail.modules() if m is not tail)
    handles = [transformer.register_forward_pre_hook(pass_started), leaf.register_forward_pre_hook(tail_ran)]
    transformer.enable_cache(FirstBlockCacheConfig(threshold=run.threshold))
    try:
        with contextlib.ExitStack() as stack:
            if not marks:
                stack.enter_context(transformer.cache_context("cond"))
            yield run
    finally:
        transformer.disable_cache()
        for handle in handles:
            handle.remove()
        log.info("step cache %s: %d of %d passes computed", speed, run.computed, run.passes)


def choices_for(denoiser: str | None) -> dict[str, Any]:
    """What each `speed` would do for a model with this denoiser ("transformer" | "unet"; None: unknown), for doctor."""
    report: dict[str, Any] = {"quality": "no cache: every step computed (the default)"}
    for speed, threshold in FBC_THRESHOLDS.items():
        if denoiser == "unet":
            report[speed] = "runs at quality: no step cache for UNets in this build"
        else:
            report[speed] = (f"first_block_cache, threshold {threshold:g} (transformer families whose pipeline marks "
                             "its passes, or that run one pass per step)")
    return report
