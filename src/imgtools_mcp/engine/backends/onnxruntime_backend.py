"""ONNX Runtime: offered only with the execution providers it serves well (CUDA, ROCm, DirectML).

On a CPU, ONNX Runtime runs these models in fp32 only (measured ~9.4 s per SD 1.5 UNet step here, against
~2-3 s for OpenVINO or torch in bf16), so it is refused there with that reason. Where a GPU provider is
present, this build still runs the pipeline on torch: the ONNX export and session pipeline are not written
yet, and every request says so in its `engine` info rather than pretending.
"""

from __future__ import annotations

import importlib.util
from typing import TYPE_CHECKING, Any, ClassVar

from .base import Backend, Capabilities

if TYPE_CHECKING:
    from ..device import DeviceFacts

# The execution provider that serves each device kind well.
PROVIDERS = {
    "cuda": ("CUDAExecutionProvider", "TensorrtExecutionProvider"),
    "rocm": ("ROCMExecutionProvider", "MIGraphXExecutionProvider"),
}
DIRECTML_PROVIDER = "DmlExecutionProvider"


def provider_for(kind: str, available_providers: list[str]) -> str | None:
    """The ONNX Runtime execution provider to use for a device kind, or None when none serves it well."""
    for provider in PROVIDERS.get(kind, ()):
        if provider in available_providers:
            return provider
    # DirectML drives any Windows GPU; torch sees those GPUs as nothing, so it is worth it from the CPU side too.
    if DIRECTML_PROVIDER in available_providers:
        return DIRECTML_PROVIDER
    return None


def refusal_for(kind: str, installed: bool, available_providers: list[str]) -> str | None:
    """Why ONNX Runtime is not offered on this device (pure: tested with made-up provider lists)."""
    if not installed:
        return "the onnxruntime package is not installed (pip install 'imgtools-mcp[onnx]' or onnxruntime-gpu)"
    if provider_for(kind, available_providers) is not None:
        return None
    if kind == "cpu":
        return (
            "ONNX Runtime's CPU provider runs these models in fp32 only, several times slower than OpenVINO or torch "
            "in bf16; it is offered with the CUDA, ROCm and DirectML providers"
        )
    wanted = ", ".join(PROVIDERS.get(kind, ())) or DIRECTML_PROVIDER
    have = ", ".join(available_providers) or "none"
    return f"no ONNX Runtime provider for {kind} (needs {wanted}; this onnxruntime has {have})"


class OnnxRuntimeBackend(Backend):
    id: ClassVar[str] = "onnxruntime"
    capabilities: ClassVar[Capabilities] = Capabilities(
        device_kinds=frozenset({"cuda", "rocm"}), families=frozenset({"sd1", "sd2", "sdxl"}), lora=False, any_size=False
    )
    components: ClassVar[tuple[str, ...]] = ("unet", "vae_decoder")

    @classmethod
    def unavailable(cls, facts: "DeviceFacts") -> str | None:
        installed = importlib.util.find_spec("onnxruntime") is not None
        providers: list[str] = []
        if installed:
            import onnxruntime

            providers = list(onnxruntime.get_available_providers())
        return refusal_for(facts.kind, installed, providers)

    def prepare(self, model: Any, shape: Any) -> dict[str, str]:
        why = "the ONNX Runtime pipeline is not implemented in this build"
        return {component: why for component in self.components}
