"""Table tests for the pure dtype, VAE dtype and backend choices, on made-up devices."""

from __future__ import annotations

import pytest

from imgtools_mcp.engine.backends import Capabilities, backend_capabilities
from imgtools_mcp.engine.choice import Choice, choose_backend, choose_dtype, choose_vae_dtype, normalize_dtype
from imgtools_mcp.engine.device import DeviceFacts, cpu_supports_bf16, cuda_supports_bf16

GB = 10**9


def cuda_gpu(capability: tuple[int, int], memory_gb: int = 8) -> DeviceFacts:
    return DeviceFacts(
        kind="cuda",
        name=f"CUDA sm_{capability[0]}{capability[1]}",
        index=0,
        total_memory_bytes=memory_gb * GB,
        free_memory_bytes=memory_gb * GB,
        supports_bf16=cuda_supports_bf16(capability),
        supports_fp16=capability >= (5, 3),
        compute_capability=capability,
    )


def cpu(*features: str) -> DeviceFacts:
    flags = frozenset(features)
    return DeviceFacts(
        kind="cpu",
        name="CPU " + "+".join(sorted(flags)),
        index=None,
        total_memory_bytes=32 * GB,
        free_memory_bytes=28 * GB,
        supports_bf16=cpu_supports_bf16(flags),
        supports_fp16=False,
        cpu_features=flags,
    )


def mps(bf16: bool = True) -> DeviceFacts:
    return DeviceFacts(
        kind="mps",
        name="Apple M2",
        index=None,
        total_memory_bytes=16 * GB,
        free_memory_bytes=12 * GB,
        supports_bf16=bf16,
        supports_fp16=True,
        is_unified_memory=True,
    )


def xpu(bf16: bool = True) -> DeviceFacts:
    return DeviceFacts(
        kind="xpu", name="Intel Arc A770", index=0, total_memory_bytes=16 * GB, free_memory_bytes=16 * GB,
        supports_bf16=bf16, supports_fp16=True,
    )  # fmt: skip


def rocm(bf16: bool) -> DeviceFacts:
    return DeviceFacts(
        kind="rocm", name="AMD Radeon", index=0, total_memory_bytes=16 * GB, free_memory_bytes=16 * GB,
        supports_bf16=bf16, supports_fp16=True,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("facts", "expected"),
    [
        (cuda_gpu((6, 1)), "fp16"),  # Pascal
        (cuda_gpu((7, 0)), "fp16"),  # Volta
        (cuda_gpu((7, 5)), "fp16"),  # Turing
        (cuda_gpu((8, 0)), "bf16"),  # A100
        (cuda_gpu((8, 6)), "bf16"),  # RTX 30xx
        (cuda_gpu((8, 9)), "bf16"),  # RTX 40xx
        (cuda_gpu((9, 0)), "bf16"),  # H100
        (cuda_gpu((5, 0)), "fp32"),  # Maxwell: no fp16 arithmetic
        (rocm(bf16=True), "bf16"),
        (rocm(bf16=False), "fp16"),
        (xpu(bf16=True), "bf16"),
        (xpu(bf16=False), "fp16"),
        (mps(bf16=True), "fp16"),  # MPS has bf16 on macOS 14, but fp16 is its fast path
        (mps(bf16=False), "fp16"),
        (cpu("avx2", "avx512f", "amx_tile", "amx_bf16"), "bf16"),  # Sapphire Rapids
        (cpu("avx2", "avx512f", "avx512_bf16"), "bf16"),  # Cooper Lake, Zen 4
        (cpu("asimd", "bf16"), "bf16"),  # Graviton 3
        (cpu("avx2", "avx512f"), "fp32"),  # Skylake-SP
        (cpu("avx2"), "fp32"),
        (cpu(), "fp32"),
    ],
    ids=lambda value: value.name if isinstance(value, DeviceFacts) else value,
)
def test_auto_dtype(facts: DeviceFacts, expected: str) -> None:
    choice = choose_dtype(facts)
    assert choice.value == expected
    assert choice.reason


@pytest.mark.parametrize(
    ("facts", "requested", "expected", "warns"),
    [
        (cuda_gpu((8, 6)), "fp32", "fp32", False),
        (cuda_gpu((8, 6)), "fp16", "fp16", False),
        (cuda_gpu((7, 5)), "bf16", "bf16", True),  # emulated on Turing: honoured, with a warning
        (cpu("avx2"), "fp16", "fp16", True),
        (
            DeviceFacts("cpu", "Granite Rapids", None, GB, GB, True, True, cpu_features=frozenset({"amx_fp16"})),
            "fp16",
            "fp16",
            False,
        ),
        (cpu("avx2"), "bf16", "bf16", True),
        (cpu("avx512_bf16"), "bf16", "bf16", False),
        (mps(bf16=True), "bf16", "bf16", False),
        (cuda_gpu((8, 6)), "float16", "fp16", False),
        (cuda_gpu((8, 6)), " BFloat16 ", "bf16", False),
    ],
)
def test_explicit_dtype_is_honoured(facts: DeviceFacts, requested: str, expected: str, warns: bool) -> None:
    choice = choose_dtype(facts, requested)
    assert choice.value == expected
    assert ("warning" in choice.reason) is warns


def test_bf16_on_mps_without_support_is_refused() -> None:
    with pytest.raises(ValueError, match="bf16.*MPS"):
        choose_dtype(mps(bf16=False), "bf16")


@pytest.mark.parametrize("requested", ["fp8", "int4", "", "double"])
def test_unknown_dtype_names_the_allowed_values(requested: str) -> None:
    with pytest.raises(ValueError, match="auto, fp32, fp16 or bf16"):
        choose_dtype(cuda_gpu((8, 6)), requested)


def test_normalize_dtype() -> None:
    assert normalize_dtype("AUTO") == "auto"
    assert normalize_dtype("half") == "fp16"


@pytest.mark.parametrize(
    ("facts", "dtype", "family", "fp16_safe", "expected"),
    [
        (cuda_gpu((7, 5)), "fp16", "sdxl", False, "fp32"),  # the SDXL VAE overflows in fp16
        (cuda_gpu((7, 5)), "fp16", "sdxl", True, "fp16"),  # a fixed VAE (madebyollin/sdxl-vae-fp16-fix) does not
        (cuda_gpu((8, 6)), "fp16", "sdxl", False, "bf16"),  # fp32's range at half its memory
        (mps(bf16=True), "fp16", "sdxl", False, "fp32"),
        (cuda_gpu((7, 5)), "fp16", "sd1", False, "fp16"),
        (cuda_gpu((8, 6)), "bf16", "sdxl", False, "bf16"),
        (cpu("avx2"), "fp32", "sdxl", False, "fp32"),
    ],
)
def test_vae_dtype(facts: DeviceFacts, dtype: str, family: str, fp16_safe: bool, expected: str) -> None:
    assert choose_vae_dtype(facts, dtype, family, vae_fp16_safe=fp16_safe).value == expected


WITH_OPENVINO = frozenset({"torch", "openvino"})
TORCH_ONLY = frozenset({"torch"})


def test_the_choice_reads_the_backend_registry() -> None:
    """The table below decides from what each backend class declares: these are the declarations it relies on."""
    caps = backend_capabilities()
    assert list(caps) == ["torch", "openvino"]
    assert caps["torch"].families is None and caps["torch"].device_kinds >= {"cpu", "cuda", "rocm", "xpu", "mps"}
    assert caps["openvino"].device_kinds == {"cpu"} and caps["openvino"].preferred_on == {"cpu"}
    assert caps["openvino"].families == {"sd1", "sd2", "sdxl"} and not caps["openvino"].lora


@pytest.mark.parametrize(
    ("facts", "available", "family", "expected", "reason"),
    [
        (cuda_gpu((8, 6)), WITH_OPENVINO, "sdxl", "torch", "torch runs natively on cuda"),
        (mps(), WITH_OPENVINO, "sd1", "torch", "torch runs natively on mps"),
        (xpu(), WITH_OPENVINO, "sd1", "torch", "torch runs natively on xpu"),
        (rocm(bf16=True), WITH_OPENVINO, "sd1", "torch", "torch runs natively on rocm"),
        (cpu("avx2"), WITH_OPENVINO, "sd1", "openvino", "OpenVINO compiles SD-family models"),
        (cpu("avx2"), WITH_OPENVINO, "sd2", "openvino", "OpenVINO compiles"),
        (cpu("amx_bf16"), WITH_OPENVINO, "sdxl", "openvino", "OpenVINO compiles"),
        (cpu("avx2"), WITH_OPENVINO, "flux", "torch", "OpenVINO is not used for the flux family; torch on cpu"),
        (cpu("avx2"), TORCH_ONLY, "sd1", "torch", "OpenVINO is not installed; torch on cpu"),
    ],
)
def test_auto_backend(facts: DeviceFacts, available: frozenset[str], family: str, expected: str, reason: str) -> None:
    choice = choose_backend(facts, available=available, family=family)
    assert choice.value == expected
    assert reason in choice.reason


@pytest.mark.parametrize(
    ("facts", "requested", "expected"),
    [
        (cpu("avx2"), "torch", "torch"),
        (cpu("avx2"), "openvino", "openvino"),
        (cuda_gpu((8, 6)), "Torch", "torch"),
        (mps(), "torch", "torch"),
    ],
)
def test_explicit_backend_is_honoured(facts: DeviceFacts, requested: str, expected: str) -> None:
    assert choose_backend(facts, requested, available=WITH_OPENVINO, family="sd1").value == expected


@pytest.mark.parametrize(
    ("facts", "requested", "available", "message"),
    [
        (cpu("avx2"), "openvino", TORCH_ONLY, r"'openvino' is not installed; installed backends: torch"),
        (cuda_gpu((8, 6)), "openvino", WITH_OPENVINO, r"'openvino' runs on cpu in this build, not on cuda"),
        # The class declares CPU only, so an Intel GPU is refused too (the rules once disagreed here).
        (xpu(), "openvino", WITH_OPENVINO, r"'openvino' runs on cpu in this build, not on xpu"),
        (cpu("avx2"), "onnxruntime", WITH_OPENVINO, r"backend must be auto, torch, openvino; got 'onnxruntime'"),
        (cpu("avx2"), "tensorrt", WITH_OPENVINO, r"backend must be auto, torch, openvino; got 'tensorrt'"),
    ],
)
def test_impossible_backend_requests_are_refused(
    facts: DeviceFacts, requested: str, available: frozenset[str], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        choose_backend(facts, requested, available=available, family="sd1")


def test_a_backend_declared_faster_on_a_device_is_picked_there_by_auto() -> None:
    """A new backend needs only its declaration: auto picks it where it says it is preferred, for its families."""
    caps = {
        **backend_capabilities(),
        "fastgpu": Capabilities(
            label="FastGPU", device_kinds=frozenset({"cuda"}), families=frozenset({"sdxl"}), lora=False, any_size=False,
            preferred_on=frozenset({"cuda"}), why_preferred="FastGPU is faster on CUDA",
        ),
    }
    available = frozenset({"torch", "openvino", "fastgpu"})
    assert choose_backend(cuda_gpu((9, 0)), available=available, family="sdxl", capabilities=caps) == Choice(
        "fastgpu", "FastGPU is faster on CUDA"
    )
    assert choose_backend(cuda_gpu((9, 0)), available=available, family="sd1", capabilities=caps).value == "torch"
    assert choose_backend(cpu("avx2"), available=available, family="sdxl", capabilities=caps).value == "openvino"
    with pytest.raises(ValueError, match="'fastgpu' runs on cuda in this build, not on cpu"):
        choose_backend(cpu("avx2"), "fastgpu", available=available, family="sdxl", capabilities=caps)


def test_explicit_openvino_for_an_untested_family_warns() -> None:
    choice = choose_backend(cpu("avx2"), "openvino", available=WITH_OPENVINO, family="flux")
    assert choice == Choice("openvino", choice.reason)
    assert "warning" in choice.reason
