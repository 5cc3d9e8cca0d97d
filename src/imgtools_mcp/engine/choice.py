"""Pure choices of dtype, VAE dtype and backend from device facts, each with the reason it was made."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Generic, TypeVar

from .device import DeviceFacts

T = TypeVar("T")

DTYPES = ("fp32", "fp16", "bf16")
DTYPE_ALIASES = {"float32": "fp32", "float16": "fp16", "half": "fp16", "bfloat16": "bf16"}
DTYPE_BYTES = {"fp32": 4, "fp16": 2, "bf16": 2}

BACKENDS = ("torch", "openvino", "onnxruntime")
# Families whose pipelines OpenVINO (through optimum-intel) compiles and runs well on CPU.
OPENVINO_FAMILIES = frozenset({"sd1", "sd2", "sdxl"})
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
    facts: DeviceFacts, requested: str = "auto", *, available: set[str] | frozenset[str], family: str
) -> Choice[str]:
    """torch on GPUs; OpenVINO on CPU for SD-family models when installed; explicit requests checked."""
    name = requested.strip().lower()
    if name != "auto" and name not in BACKENDS:
        raise ValueError(f"backend must be auto, {', '.join(BACKENDS)}; got {requested!r}")
    if name != "auto":
        return _explicit_backend(facts, name, available, family)
    if facts.kind in GPU_KINDS:
        return Choice("torch", f"torch runs natively on {facts.kind}")
    if "openvino" not in available:
        return Choice("torch", "OpenVINO is not installed; torch on CPU")
    if family not in OPENVINO_FAMILIES:
        return Choice("torch", f"OpenVINO is not used for the {family} family; torch on CPU")
    return Choice("openvino", "OpenVINO compiles SD-family models for this CPU and runs them faster than torch")


def _explicit_backend(facts: DeviceFacts, name: str, available: set[str] | frozenset[str], family: str) -> Choice[str]:
    if name not in available:
        installed = ", ".join(sorted(available)) or "none"
        raise ValueError(f"backend {name!r} is not installed; installed backends: {installed}")
    if name == "openvino" and facts.kind not in ("cpu", "xpu"):
        raise ValueError(f"backend 'openvino' runs on Intel CPUs and GPUs, not on {facts.kind}; use torch")
    if name == "onnxruntime" and facts.kind not in ("cuda", "rocm"):
        raise ValueError(
            f"backend 'onnxruntime' is used with its CUDA/ROCm/DirectML execution providers, not on {facts.kind}; "
            "use torch (or openvino on CPU)"
        )
    if name == "openvino" and family not in OPENVINO_FAMILIES:
        return Choice(name, f"requested openvino; warning: the {family} family is untested with it")
    return Choice(name, f"requested {name}")
