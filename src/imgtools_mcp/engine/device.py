"""Facts about the machine's compute devices (memory, precision support, CPU features), gathered when asked."""

from __future__ import annotations

import os
import platform
import re
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import torch

DEVICE_KINDS = ("cuda", "rocm", "xpu", "mps", "cpu")
PROC_CPUINFO = Path("/proc/cpuinfo")
# The /proc/cpuinfo flags that matter for choosing precision and backends; the rest is noise in `doctor`.
RELEVANT_CPU_FLAGS = frozenset(
    {
        "avx2", "fma", "f16c", "avx512f", "avx512_bf16", "avx512_fp16", "avx512_vnni", "avx_vnni",
        "amx_tile", "amx_bf16", "amx_int8", "amx_fp16",
        "asimd", "asimdhp", "fphp", "bf16", "sve", "sve2", "i8mm",
    }
)  # fmt: skip
# x86 AMX/AVX512 and Arm BF16 extensions are what oneDNN uses for fast bf16 matmuls.
CPU_BF16_FLAGS = frozenset({"amx_bf16", "avx512_bf16", "bf16"})
CPU_FP16_FLAGS = frozenset({"amx_fp16", "avx512_fp16", "asimdhp"})
# ROCm architectures with bf16 matrix instructions (CDNA MI100+, RDNA3+); torch reports True for every AMD GPU.
ROCM_BF16_ARCH_PREFIXES = ("gfx908", "gfx90a", "gfx94", "gfx95", "gfx11", "gfx12")
_REQUEST_PATTERN = re.compile(r"^(cuda|rocm|xpu|mps|cpu)(?::(\d+))?$")


@dataclass(frozen=True)
class DeviceFacts:
    """One device as the engine sees it; for the CPU, memory figures are system RAM."""

    kind: str  # one of DEVICE_KINDS
    name: str
    index: int | None
    total_memory_bytes: int
    free_memory_bytes: int
    supports_bf16: bool  # natively, i.e. as fast or faster than fp32
    supports_fp16: bool
    compute_capability: tuple[int, int] | None = None  # CUDA only
    is_unified_memory: bool = False  # MPS and integrated GPUs share system RAM
    cpu_features: frozenset[str] = field(default_factory=frozenset)
    cpu_cores: int = 1
    system_ram_total_bytes: int = 0
    system_ram_available_bytes: int = 0

    @property
    def torch_device(self) -> str:
        """The string torch expects; ROCm devices are addressed as `cuda` by torch."""
        if self.kind in ("cpu", "mps"):
            return self.kind
        torch_kind = "cuda" if self.kind == "rocm" else self.kind
        return f"{torch_kind}:{self.index or 0}"

    @property
    def is_accelerator(self) -> bool:
        return self.kind != "cpu"


def cpu_features(cpuinfo: Path = PROC_CPUINFO) -> frozenset[str]:
    """Relevant CPU flags from /proc/cpuinfo; torch's detected vector ISA where that file does not exist."""
    # x86 names the line "flags", Arm names it "Features"; every core lists the same set.
    flags = _cpuinfo_value(cpuinfo, "flags", "Features")
    if flags is not None:
        return frozenset(flags.split()) & RELEVANT_CPU_FLAGS
    capability = torch.backends.cpu.get_cpu_capability()  # e.g. "AVX512", "AVX2", "SVE256", "DEFAULT"
    if capability.startswith("AVX512"):
        return frozenset({"avx512f", "avx2"})
    if capability == "AVX2":
        return frozenset({"avx2"})
    if capability.startswith("SVE"):
        return frozenset({"sve", "asimd"})
    return frozenset()


def _cpuinfo_value(cpuinfo: Path, *keys: str) -> str | None:
    """The value of the first /proc/cpuinfo line named by one of `keys`; None off Linux."""
    if not cpuinfo.exists():
        return None
    for line in cpuinfo.read_text(errors="replace").splitlines():
        key, _, value = line.partition(":")
        if key.strip() in keys:
            return value.strip()
    return None


def cpu_supports_bf16(features: frozenset[str]) -> bool:
    return bool(features & CPU_BF16_FLAGS)


def cuda_supports_bf16(compute_capability: tuple[int, int]) -> bool:
    # Ampere (8.0) and newer have bf16 tensor cores; older cards only emulate it.
    return compute_capability >= (8, 0)


def rocm_supports_bf16(arch_name: str) -> bool:
    return arch_name.startswith(ROCM_BF16_ARCH_PREFIXES)


def installed_backends() -> frozenset[str]:
    """Backends whose packages can be imported here (torch always); does not import them. Read from the registry."""
    from .backends import installed_backends as from_registry  # the registry imports this module

    return from_registry()


def detect_devices() -> list[DeviceFacts]:
    """Every usable device, most preferred first: CUDA/ROCm, XPU, MPS, then the CPU (always present)."""
    return [_facts_for(kind, index) for kind, index in _available_devices()]


def probe(device: str = "auto") -> DeviceFacts:
    """Facts for the requested device (`auto`, `cpu`, `cuda[:N]`, `rocm[:N]`, `xpu[:N]`, `mps`)."""
    requested = device.strip().lower()
    available = _available_devices()
    if requested == "auto":
        return _facts_for(*available[0])
    match = _REQUEST_PATTERN.match(requested)
    if match is None:
        raise ValueError(f"device must be auto, cpu, cuda[:N], rocm[:N], xpu[:N] or mps; got {device!r}")
    kind, index_text = match.group(1), match.group(2)
    index = int(index_text) if index_text is not None else None
    for candidate_kind, candidate_index in available:
        # torch addresses ROCm GPUs as `cuda`, so users write either name for them.
        same_kind = candidate_kind == kind or {candidate_kind, kind} == {"cuda", "rocm"}
        if same_kind and (index is None or index == (candidate_index or 0)):
            return _facts_for(candidate_kind, candidate_index)
    names = ", ".join(_display_name(k, i) for k, i in available)
    raise ValueError(f"device {device!r} is not available; this machine has: {names}")


def _display_name(kind: str, index: int | None) -> str:
    return kind if index is None else f"{kind}:{index}"


def _available_devices() -> list[tuple[str, int | None]]:
    """(kind, index) pairs from cheap counts only, so no GPU context is created for devices not used."""
    devices: list[tuple[str, int | None]] = []
    if torch.cuda.is_available():
        gpu_kind = "rocm" if torch.version.hip else "cuda"
        devices += [(gpu_kind, i) for i in range(torch.cuda.device_count())]
    if hasattr(torch, "xpu") and torch.xpu.is_available():
        devices += [("xpu", i) for i in range(torch.xpu.device_count())]
    if torch.backends.mps.is_available():
        devices.append(("mps", None))
    devices.append(("cpu", None))
    return devices


def _facts_for(kind: str, index: int | None) -> DeviceFacts:
    host = _host_facts()
    if kind in ("cuda", "rocm"):
        return _cuda_facts(kind, index or 0, host)
    if kind == "xpu":
        return _xpu_facts(index or 0, host)
    if kind == "mps":
        return _mps_facts(host)
    return _cpu_facts(host)


@dataclass(frozen=True)
class _HostFacts:
    cpu_features: frozenset[str]
    cpu_cores: int
    ram_total_bytes: int
    ram_available_bytes: int


def _host_facts() -> _HostFacts:
    memory = psutil.virtual_memory()
    cores = psutil.cpu_count(logical=False) or os.cpu_count() or 1
    # A container may be pinned to fewer CPUs than the machine has.
    if hasattr(os, "sched_getaffinity"):
        cores = min(cores, len(os.sched_getaffinity(0)))
    return _HostFacts(cpu_features(), cores, memory.total, memory.available)


def _with_host(host: _HostFacts, **facts) -> DeviceFacts:
    return DeviceFacts(
        cpu_features=host.cpu_features,
        cpu_cores=host.cpu_cores,
        system_ram_total_bytes=host.ram_total_bytes,
        system_ram_available_bytes=host.ram_available_bytes,
        **facts,
    )


def _cuda_facts(kind: str, index: int, host: _HostFacts) -> DeviceFacts:
    properties = torch.cuda.get_device_properties(index)
    free, total = torch.cuda.mem_get_info(index)
    if kind == "rocm":
        arch = properties.gcnArchName
        capability, bf16 = None, rocm_supports_bf16(arch)
        name = f"{properties.name} ({arch})"
    else:
        capability = (properties.major, properties.minor)
        bf16, name = cuda_supports_bf16(capability), properties.name
    return _with_host(
        host,
        kind=kind,
        name=name,
        index=index,
        total_memory_bytes=total,
        free_memory_bytes=free,
        supports_bf16=bf16,
        # Compute capability 5.3+ has fp16 arithmetic; every ROCm GPU torch supports has it.
        supports_fp16=capability is None or capability >= (5, 3),
        compute_capability=capability,
        is_unified_memory=bool(properties.is_integrated),
    )


def _xpu_facts(index: int, host: _HostFacts) -> DeviceFacts:
    properties = torch.xpu.get_device_properties(index)
    free, total = torch.xpu.mem_get_info(index)
    # bf16 is fast only with XMX matrix engines (Arc, Data Center Max); other iGPUs merely convert.
    bf16 = properties.has_bfloat16_conversions and properties.has_subgroup_matrix_multiply_accumulate
    return _with_host(
        host,
        kind="xpu",
        name=properties.name,
        index=index,
        total_memory_bytes=total,
        free_memory_bytes=free,
        supports_bf16=bool(bf16),
        supports_fp16=bool(properties.has_fp16),
        is_unified_memory=bool(properties.is_integrated_gpu),
    )


def _mps_facts(host: _HostFacts) -> DeviceFacts:
    # Metal caps a process's GPU working set below physical RAM, and that RAM is shared with everything else.
    total = torch.mps.recommended_max_memory()
    free = min(total - torch.mps.driver_allocated_memory(), host.ram_available_bytes)
    return _with_host(
        host,
        kind="mps",
        name=f"Apple {platform.machine()} GPU (MPS)",
        index=None,
        total_memory_bytes=total,
        free_memory_bytes=max(free, 0),
        supports_bf16=_mps_runs_bf16(),
        supports_fp16=True,
        is_unified_memory=True,
    )


def _mps_runs_bf16() -> bool:
    # MPS gained bf16 with macOS 14; older systems raise when a bf16 tensor is created.
    try:
        torch.zeros(1, dtype=torch.bfloat16, device="mps")
    except (RuntimeError, TypeError):
        return False
    return True


def _cpu_facts(host: _HostFacts) -> DeviceFacts:
    return _with_host(
        host,
        kind="cpu",
        name=_cpuinfo_value(PROC_CPUINFO, "model name") or platform.processor() or platform.machine() or "CPU",
        index=None,
        total_memory_bytes=host.ram_total_bytes,
        free_memory_bytes=host.ram_available_bytes,
        supports_bf16=cpu_supports_bf16(host.cpu_features),
        supports_fp16=bool(host.cpu_features & CPU_FP16_FLAGS),
    )
