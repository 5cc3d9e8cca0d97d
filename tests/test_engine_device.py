"""Device detection on the machine the tests run on, checked against what the OS itself reports."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import psutil
import pytest
import torch

from imgtools_mcp.engine.backends import backend_classes
from imgtools_mcp.engine.choice import choose_dtype
from imgtools_mcp.engine.device import (
    CPU_BF16_FLAGS,
    DeviceFacts,
    cpu_features,
    cpu_supports_bf16,
    cuda_supports_bf16,
    detect_devices,
    installed_backends,
    probe,
    rocm_supports_bf16,
)

CPUINFO = Path("/proc/cpuinfo")


def _os_cpu_flags() -> set[str]:
    for line in CPUINFO.read_text().splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return set(value.split())
    return set()


def test_detect_devices_ends_with_the_cpu() -> None:
    devices = detect_devices()
    assert devices[-1].kind == "cpu"
    assert [d.kind for d in devices].count("cpu") == 1


def test_auto_picks_the_first_detected_device() -> None:
    # Free memory moves between two probes (anything else running allocates); the device is what must agree.
    def device(facts):
        return dataclasses.replace(facts, free_memory_bytes=0, system_ram_available_bytes=0)

    assert device(probe("auto")) == device(detect_devices()[0])


@pytest.mark.skipif(not CPUINFO.exists(), reason="needs /proc/cpuinfo (Linux)")
def test_cpu_facts_agree_with_proc_cpuinfo() -> None:
    facts = probe("cpu")
    os_flags = _os_cpu_flags()
    assert facts.kind == "cpu" and facts.torch_device == "cpu"
    assert facts.cpu_features <= os_flags
    for flag in ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile"):
        assert (flag in facts.cpu_features) == (flag in os_flags), flag
    native_bf16 = bool(os_flags & CPU_BF16_FLAGS)
    assert facts.supports_bf16 is native_bf16
    assert choose_dtype(facts).value == ("bf16" if native_bf16 else "fp32")


def test_cpu_memory_and_cores_agree_with_the_os() -> None:
    facts = probe("cpu")
    assert facts.total_memory_bytes == facts.system_ram_total_bytes == psutil.virtual_memory().total
    assert 0 < facts.free_memory_bytes <= facts.total_memory_bytes
    assert 1 <= facts.cpu_cores <= (os.cpu_count() or 1)
    assert facts.name


def test_explicit_cpu_is_honoured_even_with_an_accelerator() -> None:
    assert probe("cpu").kind == "cpu"
    assert probe(" CPU ").kind == "cpu"


def test_unavailable_device_says_what_is_available() -> None:
    missing = "cuda:7" if torch.cuda.device_count() < 8 else "xpu:7"
    with pytest.raises(ValueError, match=f"device '{missing}' is not available; this machine has: .*cpu$"):
        probe(missing)


@pytest.mark.skipif(torch.cuda.is_available() or torch.backends.mps.is_available(), reason="CPU-only machines")
@pytest.mark.parametrize("request_", ["cuda", "cuda:1", "rocm", "mps", "xpu:0"])
def test_gpu_requests_fail_clearly_on_a_cpu_only_machine(request_: str) -> None:
    with pytest.raises(ValueError, match=f"device '{request_}' is not available; this machine has: cpu$"):
        probe(request_)


@pytest.mark.parametrize("request_", ["gpu", "cuda:x", "cuda:-1", "tpu", ""])
def test_malformed_device_requests_name_the_allowed_forms(request_: str) -> None:
    with pytest.raises(ValueError, match=r"device must be auto, cpu, cuda\[:N\], rocm\[:N\], xpu\[:N\] or mps"):
        probe(request_)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA/ROCm GPU")
def test_cuda_facts() -> None:
    facts = probe("cuda:0")
    assert facts.kind in ("cuda", "rocm") and facts.torch_device == "cuda:0"
    free, total = torch.cuda.mem_get_info(0)
    assert facts.total_memory_bytes == total
    assert 0 < facts.free_memory_bytes <= total
    if facts.kind == "cuda":
        assert facts.compute_capability == torch.cuda.get_device_capability(0)
        assert facts.supports_bf16 is (facts.compute_capability >= (8, 0))


@pytest.mark.parametrize(
    ("facts", "expected"),
    [
        (DeviceFacts("cuda", "A", 1, 1, 1, True, True), "cuda:1"),
        (DeviceFacts("rocm", "MI300", 0, 1, 1, True, True), "cuda:0"),  # torch addresses ROCm as cuda
        (DeviceFacts("xpu", "Arc", 0, 1, 1, True, True), "xpu:0"),
        (DeviceFacts("mps", "M2", None, 1, 1, True, True), "mps"),
        (DeviceFacts("cpu", "CPU", None, 1, 1, False, False), "cpu"),
    ],
)
def test_torch_device(facts: DeviceFacts, expected: str) -> None:
    assert facts.torch_device == expected
    assert facts.is_accelerator is (facts.kind != "cpu")


@pytest.mark.parametrize(
    ("capability", "expected"), [((6, 1), False), ((7, 5), False), ((8, 0), True), ((8, 9), True), ((12, 0), True)]
)
def test_cuda_bf16_from_compute_capability(capability: tuple[int, int], expected: bool) -> None:
    assert cuda_supports_bf16(capability) is expected


@pytest.mark.parametrize(
    ("arch", "expected"),
    [
        ("gfx90a:sramecc+:xnack-", True),
        ("gfx942", True),
        ("gfx1100", True),
        ("gfx1201", True),
        ("gfx1030", False),
        ("gfx906", False),
    ],
)
def test_rocm_bf16_from_architecture(arch: str, expected: bool) -> None:
    assert rocm_supports_bf16(arch) is expected


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        ({"avx2", "amx_bf16", "amx_tile"}, True),
        ({"avx512f", "avx512_bf16"}, True),
        ({"asimd", "bf16"}, True),
        ({"avx512f"}, False),
        (set(), False),
    ],
)
def test_cpu_bf16_from_flags(flags: set[str], expected: bool) -> None:
    assert cpu_supports_bf16(frozenset(flags)) is expected


def test_cpu_features_from_an_x86_cpuinfo(tmp_path: Path) -> None:
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(
        "processor\t: 0\nmodel name\t: Intel(R) Xeon(R) Platinum 8480+\n"
        "flags\t\t: fpu sse2 avx2 fma avx512f avx512_bf16 amx_bf16 amx_tile amx_int8 sha_ni\n\n"
        "processor\t: 1\nflags\t\t: fpu sse2 avx2\n"
    )
    features = cpu_features(cpuinfo)
    assert features == {"avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile", "amx_int8"}
    assert cpu_supports_bf16(features)


def test_cpu_features_from_an_arm_cpuinfo(tmp_path: Path) -> None:
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nFeatures\t: fp asimd evtstrm aes asimdhp sve bf16 i8mm\n")
    assert cpu_features(cpuinfo) == {"asimd", "asimdhp", "sve", "bf16", "i8mm"}


def test_cpu_features_fall_back_to_torch_without_cpuinfo(tmp_path: Path) -> None:
    features = cpu_features(tmp_path / "missing")
    capability = torch.backends.cpu.get_cpu_capability()
    assert ("avx2" in features) is capability.startswith(("AVX2", "AVX512"))
    assert ("avx512f" in features) is capability.startswith("AVX512")


def test_installed_backends_always_include_torch() -> None:
    backends = installed_backends()
    assert "torch" in backends
    assert backends <= set(backend_classes())
