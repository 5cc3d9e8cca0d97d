"""The memory ladder's quantized rungs and the method per device, as tables of made-up devices and models."""

from __future__ import annotations

import pytest

from imgtools_mcp.engine.device import DeviceFacts
from imgtools_mcp.engine.memory import MemoryPlan, ModelFootprint, estimate_activation_bytes
from imgtools_mcp.engine.quantize import check_setting, choose_method, plan_weights

GB = 10**9
GIB = 1024**3


def gpu(total_gib: float, cc=(8, 6)) -> DeviceFacts:
    size = int(total_gib * GIB)
    return DeviceFacts("cuda", f"test GPU {total_gib:g} GiB", 0, size, size, True, True, compute_capability=cc)


def cpu(ram_gib: float) -> DeviceFacts:
    size = int(ram_gib * GIB)
    return DeviceFacts("cpu", "test CPU", None, size, size, True, False)


# FLUX.1-like: a 24 GB bf16 transformer, CLIP-L, a T5 encoder, the VAE.
FLUX = ModelFootprint(denoiser_bytes=24 * GB, text_encoder_bytes=(int(0.25 * GB), int(4.5 * GB)), vae_bytes=int(0.17 * GB))
SD15 = ModelFootprint(denoiser_bytes=int(1.7 * GB), text_encoder_bytes=(int(0.25 * GB),), vae_bytes=int(0.17 * GB))
DIT_1024 = estimate_activation_bytes("dit", 1024, 1024, 1, 2, classifier_free_guidance=False)
DIT_512 = estimate_activation_bytes("dit", 512, 512, 1, 2, classifier_free_guidance=False)
SD_512 = estimate_activation_bytes("sd1", 512, 512, 1, 2)
TORCHAO = {"torchao"}


@pytest.mark.parametrize(
    ("case", "facts", "footprint", "activations", "installed", "method", "plan", "reason_has"),
    [
        ("flux at 512² on a 16 GiB GPU: int8 resident", gpu(16), FLUX, DIT_512, TORCHAO, "torchao_int8", MemoryPlan.RESIDENT,
         "stay resident"),
        ("flux at 512² on a 16 GiB Ada GPU: fp8 resident", gpu(16, (8, 9)), FLUX, DIT_512, TORCHAO, "torchao_fp8",
         MemoryPlan.RESIDENT, "faster than offloading"),
        ("flux on an 8 GiB GPU: no 4-bit method installed, so offload", gpu(8), FLUX, DIT_1024, TORCHAO, None,
         MemoryPlan.SEQUENTIAL_OFFLOAD, "4bit"),
        ("flux on a 12 GiB GPU with bitsandbytes: nf4 resident", gpu(12), FLUX, DIT_1024, {*TORCHAO, "bitsandbytes"},
         "bnb_nf4", MemoryPlan.RESIDENT, "int8 (torchao_int8) needs ~15.9 GiB; 4bit weights (bnb_nf4) stay resident"),
        ("flux on a 12 GiB GPU with SDNQ too: its more accurate uint4 first", gpu(12), FLUX, DIT_1024,
         {*TORCHAO, "bitsandbytes", "sdnq"}, "sdnq_int4", MemoryPlan.RESIDENT, "4bit weights (sdnq_int4) stay resident"),
        ("flux on an 11.5 GiB GPU: uint4 does not fit, the smaller nf4 does", gpu(11.5), FLUX, DIT_1024,
         {*TORCHAO, "bitsandbytes", "sdnq"}, "bnb_nf4", MemoryPlan.RESIDENT,
         "4bit (sdnq_int4) needs ~10.7 GiB; 4bit weights (bnb_nf4) stay resident at ~9.9 GiB"),
        ("flux at 512² on 16 GiB without torchao: offload", gpu(16), FLUX, DIT_512, set(), None, MemoryPlan.GROUP_OFFLOAD,
         "not installed"),
        ("flux on an 80 GiB GPU: as loaded", gpu(80), FLUX, DIT_1024, TORCHAO, None, MemoryPlan.RESIDENT, "not quantized"),
        ("flux transformer on a 24 GiB CPU: int8", cpu(24), FLUX, DIT_1024, TORCHAO, "torchao_int8", MemoryPlan.RESIDENT,
         "stay resident"),
        ("flux on a 12 GiB CPU: smallest there is", cpu(12), FLUX, DIT_1024, TORCHAO, "torchao_int8",
         MemoryPlan.VAE_TILING, "expect swapping"),
        ("sd15 on a 4 GiB GPU: fits as loaded", gpu(4), SD15, SD_512, TORCHAO, None, MemoryPlan.RESIDENT, "not quantized"),
    ],
)
def test_ladder(case, facts, footprint, activations, installed, method, plan, reason_has):
    planned = plan_weights(facts, footprint, activations, dtype_bytes=2, installed=installed)
    assert planned.quantization.value == method, (case, planned.quantization.reason)
    assert planned.memory.value == plan, (case, planned.memory.reason)
    assert reason_has in planned.quantization.reason, (case, planned.quantization.reason)
    if method is not None:
        # The plan's footprint is the quantized one: half of bf16 plus the scales.
        assert planned.footprint.denoiser_bytes < footprint.denoiser_bytes * 0.52
        assert planned.footprint.text_encoder_bytes[0] == footprint.text_encoder_bytes[0]  # CLIP left alone
        assert planned.footprint.text_encoder_bytes[1] < footprint.text_encoder_bytes[1]  # T5 quantized


def test_explicit_memory_plan_keeps_weights_as_loaded():
    planned = plan_weights(gpu(16), FLUX, DIT_512, dtype_bytes=2, installed=TORCHAO, memory="model_offload")
    assert planned.quantization.value is None and "IMGTOOLS_MEMORY=model_offload" in planned.quantization.reason
    assert planned.memory.value is MemoryPlan.MODEL_OFFLOAD


def test_none_and_explicit_method():
    assert plan_weights(gpu(16), FLUX, DIT_1024, dtype_bytes=2, installed=TORCHAO, quantize="none").quantization.value is None
    planned = plan_weights(gpu(80), SD15, SD_512, dtype_bytes=2, installed=TORCHAO, quantize="int8")
    assert planned.quantization.value == "torchao_int8"  # asked for, though it would fit as loaded


@pytest.mark.parametrize(
    ("facts", "setting", "installed", "refusal"),
    [
        (cpu(32), "torchao_fp8", TORCHAO, "runs on cuda, not cpu"),
        (gpu(16, (8, 6)), "torchao_fp8", TORCHAO, "compute capability 8.9+ (this device: 8.6)"),
        (cpu(32), "torchao_int8", set(), "needs the torchao package"),
        (cpu(32), "bnb_nf4", TORCHAO, "bitsandbytes nf4 needs the bitsandbytes package (not installed)"),
        (cpu(32), "4bit", TORCHAO, "quantize '4bit' cannot run here"),
        (cpu(32), "int9", TORCHAO, "quantize must be one of auto, none, int8, 4bit"),
    ],
)
def test_explicit_setting_refused_with_reason(facts, setting, installed, refusal):
    with pytest.raises(ValueError, match="quantize") as caught:
        check_setting(setting, facts, installed=installed)
    assert refusal in str(caught.value)


def test_method_per_device():
    assert choose_method("int8", gpu(24, (9, 0)), installed=TORCHAO).value == "torchao_fp8"
    assert choose_method("int8", gpu(24, (8, 0)), installed=TORCHAO).value == "torchao_int8"
    assert choose_method("int8", cpu(32), installed=TORCHAO).value == "torchao_int8"
    # NNCF rewrites OpenVINO models only, and comes after the torch methods (its int8 weights run slower than
    # torch's on CPU); an OpenVINO model given a torch method runs on torch.
    both = {"nncf", *TORCHAO}
    assert choose_method("int8", cpu(32), installed=both, backend="openvino").value == "torchao_int8"
    assert choose_method("int8", cpu(32), installed={"nncf"}, backend="openvino").value == "nncf_int8"
    assert choose_method("int8", cpu(32), installed=both, backend="torch").value == "torchao_int8"
    none = choose_method("int8", cpu(32), installed={"nncf"}, backend="torch")
    assert none.value is None and "rewrites openvino models; this model runs on torch" in none.reason


@pytest.mark.parametrize(
    ("case", "facts", "quantize", "backend", "method", "reason_has"),
    [
        ("sd15 on openvino with room: as loaded", cpu(32), "auto", "openvino", None, "not quantized"),
        ("sd15 on openvino, RAM short: nncf int8", cpu(2.5), "auto", "openvino", "nncf_int8", "int8 weights (nncf_int8)"),
        ("sd15 on torch, RAM short: torchao", cpu(2.5), "auto", "torch", "torchao_int8", "int8 weights (torchao_int8)"),
        ("int8 asked, on openvino", cpu(32), "int8", "openvino", "nncf_int8", "IMGTOOLS_QUANTIZE=int8: NNCF"),
        ("nncf_int8 asked, on openvino", cpu(32), "nncf_int8", "openvino", "nncf_int8", "IMGTOOLS_QUANTIZE=nncf_int8"),
        ("nncf_int8 asked, a model on torch keeps its weights", cpu(32), "nncf_int8", "torch", None,
         "applies to models on openvino; this one runs on torch"),
        ("torchao_int8 asked, on openvino", cpu(32), "torchao_int8", "openvino", "torchao_int8", "IMGTOOLS_QUANTIZE"),
    ],
)
def test_ladder_on_the_openvino_backend(case, facts, quantize, backend, method, reason_has):
    # Only nncf installed (the openvino extra alone), so the int8 rung of an OpenVINO model is nncf's.
    installed = {"nncf"} if backend == "openvino" and not quantize.startswith("torchao") else {"nncf", *TORCHAO}
    planned = plan_weights(facts, SD15, SD_512, dtype_bytes=2, installed=installed, quantize=quantize,
                           backend=backend)  # fmt: skip
    assert planned.quantization.value == method, (case, planned.quantization.reason)
    assert reason_has in planned.quantization.reason, (case, planned.quantization.reason)


def test_explicit_nncf_is_refused_where_no_model_runs_on_openvino():
    with pytest.raises(ValueError, match="quantize 'nncf_int8' cannot run here: .*this model runs on torch"):
        check_setting("nncf_int8", cpu(32), installed={"nncf"}, backend="torch")
    assert check_setting("nncf_int8", cpu(32), installed={"nncf"}, backend="openvino").value == "nncf_int8"
    with pytest.raises(ValueError, match="needs the nncf package"):
        check_setting("nncf_int8", cpu(32), installed=TORCHAO, backend="openvino")
