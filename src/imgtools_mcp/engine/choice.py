"""Pure choices of dtype, VAE dtype and backend from device facts, each with the reason it was made."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Generic, TypeVar

from .device import DeviceFacts

if TYPE_CHECKING:
    from .backends.base import Capabilities

T = TypeVar("T")

DTYPES = ("fp32", "fp16", "bf16")
DTYPE_ALIASES = {"float32": "fp32", "float16": "fp16", "half": "fp16", "bfloat16": "bf16"}
DTYPE_BYTES = {"fp32": 4, "fp16": 2, "bf16": 2}

FALLBACK_BACKEND = "torch"  # runs every model on every device; what any other backend declines runs here
GPU_KINDS = frozenset({"cuda", "rocm", "xpu", "mps"})


@dataclass(frozen=True)
class Choice(Generic[T]):
    """A decision and the one-line reason for it, shown by `engine_status` and `doctor`."""

    value: T
    reason: str


def normalize_dtype(requested: str) -> str:
    """`auto` or a canonical dtype name; aliases such as `float16` are accepted."""
    name = requested.strip().lower()
    name = DTYPE_ALIASES.get(name, name)
    if name != "auto" and name not in DTYPES:
        raise ValueError(f"dtype must be auto, fp32, fp16 or bf16; got {requested!r}")
    return name


def choose_dtype(facts: DeviceFacts, requested: str = "auto") -> Choice[str]:
    """bf16 where the device runs it natively, fp16 on other GPUs, fp32 otherwise; explicit requests win."""
    name = normalize_dtype(requested)
    if name != "auto":
        return _explicit_dtype(facts, name)
    if facts.supports_bf16 and facts.kind != "mps":
        return Choice("bf16", f"{facts.name} runs bf16 natively; bf16 keeps fp32's range so nothing overflows")
    if facts.kind in GPU_KINDS and facts.supports_fp16:
        return Choice("fp16", f"{facts.name} has no native bf16; fp16 halves memory and runs at full speed")
    if facts.kind == "cpu":
        return Choice(
            "fp32", "this CPU has no native bf16 (AMX, AVX512-BF16, Arm BF16); emulated bf16 is slower than fp32"
        )
    return Choice("fp32", f"{facts.name} has no fast half precision")


def _explicit_dtype(facts: DeviceFacts, name: str) -> Choice[str]:
    if name == "fp32":
        return Choice("fp32", "requested fp32")
    if name == "bf16":
        if facts.kind == "mps" and not facts.supports_bf16:
            raise ValueError("dtype bf16 is not supported by MPS on this macOS (needs macOS 14+); use fp16 or fp32")
        if not facts.supports_bf16:
            return Choice("bf16", f"requested bf16; warning: {facts.name} emulates bf16, expect it to be slow")
        return Choice("bf16", "requested bf16")
    if facts.kind == "cpu" and not facts.supports_fp16:
        return Choice(
            "fp16", "requested fp16; warning: this CPU has no fp16 arithmetic (AVX512-FP16/AMX-FP16), expect it slow"
        )
    if not facts.supports_fp16:
        return Choice("fp16", f"requested fp16; warning: {facts.name} has no fast fp16")
    return Choice("fp16", "requested fp16")


def choose_vae_dtype(facts: DeviceFacts, dtype: str, family: str, *, vae_fp16_safe: bool = False) -> Choice[str]:
    """The VAE's dtype: the model's, except an fp16 SDXL VAE (it overflows to NaN/black images) is upcast."""
    if dtype != "fp16" or family != "sdxl" or vae_fp16_safe:
        return Choice(dtype, f"VAE runs in {dtype} like the rest of the model")
    # bf16 has fp32's exponent range, so it fixes the overflow at half fp32's memory where it is native.
    if facts.supports_bf16 and facts.kind != "mps":
        return Choice("bf16", "the SDXL VAE overflows in fp16; bf16 avoids that at half fp32's memory")
    return Choice("fp32", "the SDXL VAE overflows in fp16 (black images); kept in fp32")


def choose_backend(
    facts: DeviceFacts,
    requested: str = "auto",
    *,
    available: set[str] | frozenset[str],
    family: str,
    capabilities: Mapping[str, "Capabilities"] | None = None,
) -> Choice[str]:
    """The backend for a model of `family` on this device, from what each backend declares (`capabilities`,
    by default the registry's): `auto` takes a backend that prefers this device kind and runs this family
    where it is installed, torch otherwise; an explicit request is checked against the same declarations.
    """
    if capabilities is None:
        from .backends import backend_capabilities  # the registry imports this module

        capabilities = backend_capabilities()
    name = requested.strip().lower()
    if name != "auto" and name not in capabilities:
        raise ValueError(f"backend must be auto, {', '.join(capabilities)}; got {requested!r}")
    if name != "auto":
        return _explicit_backend(facts, name, available, family, capabilities[name])
    skipped: list[str] = []
    for backend_id, caps in capabilities.items():
        if backend_id == FALLBACK_BACKEND or facts.kind not in caps.preferred_on:
            continue
        if backend_id not in available:
            skipped.append(f"{caps.label} is not installed")
        elif caps.families is not None and family not in caps.families:
            skipped.append(f"{caps.label} is not used for the {family} family")
        else:
            return Choice(backend_id, caps.why_preferred or f"{caps.label} runs {family} models on {facts.kind}")
    if skipped:
        return Choice(FALLBACK_BACKEND, f"{'; '.join(skipped)}; torch on {facts.kind}")
    return Choice(FALLBACK_BACKEND, f"torch runs natively on {facts.kind}")


def _explicit_backend(
    facts: DeviceFacts, name: str, available: set[str] | frozenset[str], family: str, caps: "Capabilities"
) -> Choice[str]:
    if name not in available:
        installed = ", ".join(sorted(available)) or "none"
        raise ValueError(f"backend {name!r} is not installed; installed backends: {installed}")
    if facts.kind not in caps.device_kinds:
        kinds = ", ".join(sorted(caps.device_kinds))
        raise ValueError(f"backend {name!r} runs on {kinds} in this build, not on {facts.kind}; use auto or torch")
    if caps.families is not None and family not in caps.families:
        return Choice(name, f"requested {name}; warning: the {family} family is untested with it")
    return Choice(name, f"requested {name}")
