"""Step caches for a request's `speed`: reuse the denoiser's work between similar denoising steps, and count it.

Transformer families use diffusers' hooks: First Block Cache at `balanced` (a pass is reused while the first block's
output barely changes) and TaylorSeer at `fast` (on a fixed schedule, the whole pass's output is predicted from the
last full passes by a Taylor expansion, in its memory-light variant). UNet families use a DeepCache-style feature reuse
written here (Ma et al., "DeepCache", CVPR 2024): a full step every N steps runs the whole UNet and keeps
the deep features (what up_blocks[-2] hands to the last up block); the steps in between run only the
shallow path (conv_in, down_blocks[0], up_blocks[-1], conv_out) on top of those features.
"""

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
FBC_THRESHOLD = 0.08  # balanced
# TaylorSeer (Liu et al. 2025) at `fast`, diffusers' documented settings: the first TAYLORSEER_FIRST passes full,
# then one full pass every TAYLORSEER_INTERVAL (25 steps: 8 full), the others predicted to first order. Its lite mode
# skips every block and predicts only the output projection, so a predicted pass costs almost nothing and keeps no
# per-block factors (the full mode would keep ~2 GB of them for FLUX.1 at 512²).
TAYLORSEER_INTERVAL, TAYLORSEER_FIRST = 5, 3
# DeepCache's uniform cache intervals: a full UNet pass every N steps of a denoising loop, from its first step.
# The paper's SD 1.5 results keep close to the full model at N=2-3 (it goes to N=5-10 for larger speed-ups).
UNET_INTERVALS = {"balanced": 2, "fast": 3}
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
    method: str  # first_block_cache | taylorseer_cache | deep_cache | none
    reason: str
    threshold: float | None = None  # first_block_cache
    interval: int | None = None  # deep_cache, taylorseer_cache: a full pass every `interval` steps
    passes: int = 0
    computed: int = 0
    _computing: bool = field(default=False, repr=False)

    def as_dict(self) -> dict[str, Any]:
        info: dict[str, Any] = {"speed": self.speed, "method": self.method, "reason": self.reason}
        if self.method != "none":
            info.update({"threshold": self.threshold} if self.threshold is not None else {"interval": self.interval})
            info.update(denoiser_passes=self.passes, computed=self.computed, reused=self.passes - self.computed)
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
    if getattr(pipe, "unet", None) is not None:
        with _unet_cache(pipe.unet, speed) as run:
            yield run
        return
    transformer = getattr(pipe, "transformer", None)
    if transformer is None:
        yield StepCacheRun(speed, "none", f"{type(pipe).__name__} has no UNet or transformer a step cache can use")
        return
    tail = _tail_block(transformer)
    marks = _marks_cache_context(pipe)
    if tail is None or not hasattr(transformer, "enable_cache"):
        yield StepCacheRun(speed, "none", f"{type(transformer).__name__} has no block list diffusers' caches can use")
        return
    if not marks and not single_pass:
        yield StepCacheRun(speed, "none", f"{type(pipe).__name__} runs guided passes it does not mark for caches; ran at quality")
        return
    from diffusers.hooks import FirstBlockCacheConfig, TaylorSeerCacheConfig

    if speed == "fast":
        run = StepCacheRun(speed, "taylorseer_cache", f"after {TAYLORSEER_FIRST} full passes, one in every "
                           f"{TAYLORSEER_INTERVAL}; the others predicted from them (TaylorSeer, lite)",
                           interval=TAYLORSEER_INTERVAL)  # fmt: skip
        config: Any = TaylorSeerCacheConfig(cache_interval=TAYLORSEER_INTERVAL, disable_cache_before_step=TAYLORSEER_FIRST,
                                            max_order=1, taylor_factors_dtype=torch.float32, use_lite_mode=True)  # fmt: skip
    else:
        run = StepCacheRun(speed, "first_block_cache", "the later blocks are reused while the first block's output "
                           "barely changes", threshold=FBC_THRESHOLD)  # fmt: skip
        config = FirstBlockCacheConfig(threshold=FBC_THRESHOLD)

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
    transformer.enable_cache(config)
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


def _timestep(args: tuple, kwargs: dict[str, Any]) -> float | None:
    t = kwargs.get("timestep", args[1] if len(args) > 1 else None)
    if t is None:
        return None
    return float(torch.as_tensor(t).reshape(-1)[0])


class Cadence:
    """Which UNet passes of a call are full: the first of each denoising loop, then every `interval`-th; counted.

    A denoising loop's timesteps fall, so a pass whose timestep is not below the previous one starts a new
    loop (another image, a second pipeline call) and is full. Shared by the torch hooks below and the OpenVINO
    UNet's shallow IR (backends/openvino_deep_cache.py), so both reuse the same passes.
    """

    def __init__(self, run: StepCacheRun) -> None:
        self.run = run
        self.position = 0
        self.last_t: float | None = None
        self.shape: tuple | None = None

    def reuse(self, t: float | None, shape: tuple | None, *, have_features: bool) -> bool:
        """Whether this pass reuses the last full pass's deep features (True) or computes them (False)."""
        new_loop = t is None or self.last_t is None or t >= self.last_t or shape != self.shape
        self.position = 0 if new_loop else self.position + 1
        self.last_t, self.shape = t, shape
        reusing = not new_loop and self.position % self.run.interval != 0 and have_features
        self.run.passes += 1
        if not reusing:
            self.run.computed += 1
        return reusing


class _DeepCache:
    """The torch UNet's deep blocks' outputs from the last full pass, returned on reused passes.

    On a reused pass every block below the shallow level returns what it returned at the last full pass:
    up_blocks[-2]'s output is the deep feature the last up block builds on, and the others keep the UNet's
    skip bookkeeping (and added ControlNet residuals) in the shapes it expects; their results are then unused.
    """

    def __init__(self, unet: torch.nn.Module, run: StepCacheRun) -> None:
        self.run = run
        self.cadence = Cadence(run)
        mid = [unet.mid_block] if getattr(unet, "mid_block", None) is not None else []
        self.deep: list[torch.nn.Module] = [*unet.down_blocks[1:], *mid, *unet.up_blocks[:-1]]
        self.outputs: dict[int, Any] = {}
        self.reusing = False
        self.active = True

    def pass_started(self, module: Any, args: tuple, kwargs: dict[str, Any]) -> None:
        sample = kwargs.get("sample", args[0] if args else None)
        shape = tuple(sample.shape) if isinstance(sample, torch.Tensor) else None
        self.reusing = self.cadence.reuse(_timestep(args, kwargs), shape, have_features=len(self.outputs) == len(self.deep))
        if not self.reusing:
            self.outputs.clear()

    def wrap(self, module: torch.nn.Module) -> Any:
        """Put a reusing forward on `module` (an instance attribute, as accelerate's hooks do); returns its undo."""
        had_own = "forward" in module.__dict__
        original = module.forward
        key = id(module)

        def forward(*args: Any, **kwargs: Any) -> Any:
            if self.active and self.reusing:
                return self.outputs[key]
            out = original(*args, **kwargs)
            if self.active:
                self.outputs[key] = out
            return out

        module.forward = forward

        def undo() -> None:
            if module.__dict__.get("forward") is forward:
                if had_own:
                    module.forward = original
                else:
                    del module.forward
            # else something wrapped it after us; with `active` off ours only passes calls through

        return undo


def _unet_cache_refusal(unet: Any) -> str | None:
    from diffusers import UNet2DConditionModel

    if not isinstance(unet, UNet2DConditionModel):
        return f"{type(unet).__name__} is not a diffusers UNet2DConditionModel; ran at quality"
    if len(unet.down_blocks) < 2 or len(unet.up_blocks) < 2:
        return "the UNet has a single resolution level, so nothing lies below the shallow path; ran at quality"
    return None


@contextlib.contextmanager
def _unet_cache(unet: Any, speed: str) -> Iterator[StepCacheRun]:
    interval = UNET_INTERVALS[speed]
    reason = (f"between full UNet passes every {interval} steps, the other steps run only the outermost down and "
              "up blocks on the last full pass's deep features")  # fmt: skip
    deep_cache = getattr(unet, "deep_cache", None)  # the OpenVINO stand-in's own (backends/openvino_backend.py)
    if deep_cache is not None:
        refusal = unet.deep_cache_refusal()
        if refusal is not None:
            yield StepCacheRun(speed, "none", refusal)
            return
        run = StepCacheRun(speed, "deep_cache", reason + " (OpenVINO: a shallow IR of those blocks)", interval=interval)
        with deep_cache(Cadence(run)):
            yield run
        log.info("step cache %s on OpenVINO: %d of %d UNet passes computed", speed, run.computed, run.passes)
        return
    refusal = _unet_cache_refusal(unet)
    if refusal is not None:
        yield StepCacheRun(speed, "none", refusal)
        return
    run = StepCacheRun(speed, "deep_cache", reason, interval=interval)
    cache = _DeepCache(unet, run)
    undo = [cache.wrap(module) for module in cache.deep]
    handle = unet.register_forward_pre_hook(cache.pass_started, with_kwargs=True)
    try:
        yield run
    finally:
        cache.active = False
        handle.remove()
        for step in undo:
            step()
        cache.outputs.clear()
        log.info("step cache %s: %d of %d UNet passes computed", speed, run.computed, run.passes)


def choices_for(denoiser: str | None) -> dict[str, Any]:
    """What each `speed` would do for a model with this denoiser ("transformer" | "unet"; None: unknown), for doctor."""
    report: dict[str, Any] = {"quality": "no cache: every step computed (the default)"}
    transformer = {
        "balanced": f"first_block_cache, threshold {FBC_THRESHOLD:g}",
        "fast": f"taylorseer_cache, {TAYLORSEER_FIRST} full passes then one in every {TAYLORSEER_INTERVAL}, the others "
                "predicted",
    }  # fmt: skip
    for speed in ("balanced", "fast"):
        if denoiser == "unet":
            report[speed] = (f"deep_cache, a full UNet pass every {UNET_INTERVALS[speed]} steps; the others run the "
                             "shallow blocks on cached deep features (torch hooks; on OpenVINO a shallow IR of those blocks)")
        else:
            report[speed] = (f"{transformer[speed]} (transformer families whose pipeline marks its passes, or that run "
                             "one pass per step)")
            if denoiser is None:
                report[speed] += f"; UNet families: deep_cache, a full UNet pass every {UNET_INTERVALS[speed]} steps"
    return report
