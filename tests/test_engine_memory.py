"""Memory plans: table tests of the pure choice on made-up devices, and apply/reset on a tiny real pipeline."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel

from imgtools_mcp.engine.device import DeviceFacts
from imgtools_mcp.engine.memory import (
    ActivationEstimate,
    MemoryPlan,
    ModelFootprint,
    apply_memory_plan,
    choose_memory_plan,
    escalate,
    estimate_activation_bytes,
    footprint_of,
    reset_memory_plan,
)

GB = 10**9
# Measured fp16 weights: SD 1.5 ~2.1 GB, SDXL ~7 GB (CLIP-L 0.25 GB + OpenCLIP-bigG 1.35 GB).
SD15 = ModelFootprint(denoiser_bytes=int(1.7 * GB), text_encoder_bytes=(int(0.25 * GB),), vae_bytes=int(0.17 * GB))
SDXL = ModelFootprint(
    denoiser_bytes=int(5.1 * GB), text_encoder_bytes=(int(0.25 * GB), int(1.35 * GB)), vae_bytes=int(0.17 * GB)
)


def cuda_gpu(memory_gb: float, capability: tuple[int, int] = (8, 6)) -> DeviceFacts:
    # The driver's context takes ~0.4 GB before the engine allocates anything.
    return DeviceFacts(
        kind="cuda",
        name=f"{memory_gb:g} GB GPU",
        index=0,
        total_memory_bytes=int(memory_gb * GB),
        free_memory_bytes=int((memory_gb - 0.4) * GB),
        supports_bf16=capability >= (8, 0),
        supports_fp16=True,
        compute_capability=capability,
    )


def apple_silicon(ram_gb: int) -> DeviceFacts:
    # Metal lets one process use about two thirds of unified memory.
    usable = int(ram_gb * GB * 2 / 3)
    return DeviceFacts(
        kind="mps", name=f"M2 {ram_gb} GB", index=None, total_memory_bytes=usable, free_memory_bytes=usable,
        supports_bf16=True, supports_fp16=True, is_unified_memory=True,
    )  # fmt: skip


def cpu(ram_available_gb: float, ram_total_gb: float = 32) -> DeviceFacts:
    return DeviceFacts(
        kind="cpu", name="CPU", index=None, total_memory_bytes=int(ram_total_gb * GB),
        free_memory_bytes=int(ram_available_gb * GB), supports_bf16=True, supports_fp16=False,
    )  # fmt: skip


def activations(family: str, size: int, batch: int) -> ActivationEstimate:
    # fp16 weights; the SDXL VAE is kept in fp32 because it overflows in fp16.
    return estimate_activation_bytes(family, size, size, batch, 2, vae_dtype_bytes=4 if family == "sdxl" else 2)


R, T, M, G, S = (
    MemoryPlan.RESIDENT,
    MemoryPlan.VAE_TILING,
    MemoryPlan.MODEL_OFFLOAD,
    MemoryPlan.GROUP_OFFLOAD,
    MemoryPlan.SEQUENTIAL_OFFLOAD,
)
GPU_SIZES_GB = (4, 6, 8, 12, 24, 80)


@pytest.mark.parametrize(
    ("footprint", "family", "size", "batch", "plans_by_gpu_size"),
    [
        # GPU memory:         4GB 6GB 8GB 12GB 24GB 80GB
        (SD15, "sd1", 512, 1, (R, R, R, R, R, R)),
        (SD15, "sd1", 512, 4, (T, R, R, R, R, R)),
        (SD15, "sd1", 1024, 1, (T, R, R, R, R, R)),
        (SD15, "sd1", 1024, 4, (S, T, T, T, R, R)),
        (SD15, "sd1", 2048, 1, (S, T, T, T, R, R)),
        (SD15, "sd1", 2048, 4, (S, S, S, S, T, R)),
        (SDXL, "sdxl", 512, 1, (S, G, M, R, R, R)),
        (SDXL, "sdxl", 1024, 1, (S, S, M, M, R, R)),
        (SDXL, "sdxl", 1024, 4, (S, S, M, M, T, R)),
        (SDXL, "sdxl", 2048, 1, (S, S, M, M, T, R)),
        (SDXL, "sdxl", 2048, 4, (S, S, S, G, T, T)),
    ],
)
def test_auto_plan_on_cuda_gpus(
    footprint: ModelFootprint, family: str, size: int, batch: int, plans_by_gpu_size: tuple[MemoryPlan, ...]
) -> None:
    estimate = activations(family, size, batch)
    chosen = tuple(choose_memory_plan(cuda_gpu(gb), footprint, estimate).value for gb in GPU_SIZES_GB)
    assert chosen == plans_by_gpu_size


def test_bigger_requests_never_get_a_lighter_plan() -> None:
    for gb in GPU_SIZES_GB:
        plans = [
            choose_memory_plan(cuda_gpu(gb), SDXL, activations("sdxl", size, batch)).value
            for size, batch in ((512, 1), (1024, 1), (1024, 4), (2048, 4))
        ]
        assert plans == sorted(plans), gb


def test_compute_capability_does_not_change_the_plan() -> None:
    estimate = activations("sd1", 1024, 1)
    assert (
        choose_memory_plan(cuda_gpu(4, (7, 5)), SD15, estimate).value
        == choose_memory_plan(cuda_gpu(4, (8, 9)), SD15, estimate).value
    )


@pytest.mark.parametrize(
    ("ram_gb", "footprint", "family", "size", "expected"),
    [
        (8, SD15, "sd1", 512, R),
        (16, SD15, "sd1", 1024, R),
        (16, SDXL, "sdxl", 1024, M),
        (32, SDXL, "sdxl", 1024, R),
        (64, SDXL, "sdxl", 2048, R),
        (8, SDXL, "sdxl", 1024, S),
    ],
)
def test_auto_plan_on_apple_silicon(
    ram_gb: int, footprint: ModelFootprint, family: str, size: int, expected: MemoryPlan
) -> None:
    assert choose_memory_plan(apple_silicon(ram_gb), footprint, activations(family, size, 1)).value == expected


@pytest.mark.parametrize(
    ("available_gb", "footprint", "family", "size", "batch", "expected", "short"),
    [
        (20, SD15, "sd1", 512, 1, R, False),
        (20, SDXL, "sdxl", 1024, 1, R, False),
        (16, SDXL, "sdxl", 1024, 4, T, False),  # the full-batch decode does not fit, a tiled one does
        (4, SDXL, "sdxl", 1024, 1, T, True),  # never offload: CPU to CPU saves nothing
    ],
)
def test_cpu_plans_never_offload(
    available_gb: float,
    footprint: ModelFootprint,
    family: str,
    size: int,
    batch: int,
    expected: MemoryPlan,
    short: bool,
) -> None:
    choice = choose_memory_plan(cpu(available_gb), footprint, activations(family, size, batch))
    assert choice.value == expected
    assert "CPU from the CPU" in choice.reason
    assert ("RAM is still short" in choice.reason) is short


def test_weights_already_on_the_device_count_as_free() -> None:
    estimate = activations("sdxl", 1024, 1)
    # A 12 GB card that already holds this SDXL model resident shows only ~4.6 GB free.
    facts = cuda_gpu(12)
    loaded = DeviceFacts(**{**facts.__dict__, "free_memory_bytes": facts.free_memory_bytes - SDXL.total_bytes})
    assert choose_memory_plan(loaded, SDXL, estimate, weights_on_device=True) == choose_memory_plan(
        facts, SDXL, estimate
    )
    assert choose_memory_plan(loaded, SDXL, estimate).value > choose_memory_plan(facts, SDXL, estimate).value


@pytest.mark.parametrize("plan", list(MemoryPlan))
def test_explicit_plan_is_honoured_on_gpus(plan: MemoryPlan) -> None:
    for requested in (plan, plan.value, plan.value.upper()):
        choice = choose_memory_plan(cuda_gpu(80), SD15, activations("sd1", 512, 1), requested)
        assert choice.value is plan
        assert choice.reason == f"requested {plan.value}"


def test_explicit_plan_that_does_not_fit_warns() -> None:
    choice = choose_memory_plan(cuda_gpu(4), SDXL, activations("sdxl", 1024, 1), "resident")
    assert choice.value is R
    assert "warning" in choice.reason


@pytest.mark.parametrize("plan", [M, G, S])
def test_offload_on_cpu_is_refused(plan: MemoryPlan) -> None:
    with pytest.raises(ValueError, match="meaningless on the CPU"):
        choose_memory_plan(cpu(20), SD15, activations("sd1", 512, 1), plan.value)


def test_unknown_plan_names_the_allowed_ones() -> None:
    with pytest.raises(
        ValueError, match="auto, resident, vae_tiling, model_offload, group_offload, sequential_offload"
    ):
        choose_memory_plan(cuda_gpu(8), SD15, activations("sd1", 512, 1), "lowvram")


def test_escalate_chain() -> None:
    chain = [R]
    while (following := escalate(chain[-1])) is not None:
        chain.append(following)
    assert chain == [R, T, M, G, S]
    assert chain == sorted(chain) == list(MemoryPlan)
    assert escalate(R, device_kind="cpu") is T
    assert escalate(T, device_kind="cpu") is None


def test_plans_are_ordered_by_level_not_by_name() -> None:
    assert R < T < M < G < S
    assert S >= M and not S <= M
    assert [plan.offloads for plan in MemoryPlan] == [False, False, True, True, True]


def test_activation_estimate_arithmetic() -> None:
    small = estimate_activation_bytes("sd1", 512, 512, 1, 2)
    # Twice the pixels or twice the batch: twice the activations (no quadratic term with SDPA).
    assert estimate_activation_bytes("sd1", 1024, 512, 1, 2).denoise_bytes == pytest.approx(
        2 * small.denoise_bytes, rel=0.01
    )
    assert estimate_activation_bytes("sd1", 512, 512, 2, 2).vae_decode_bytes == 2 * small.vae_decode_bytes
    assert estimate_activation_bytes("sd1", 512, 512, 1, 4).vae_decode_bytes == 2 * small.vae_decode_bytes
    # Without a memory-efficient kernel the attention matrices grow with the square of the pixels.
    naive = estimate_activation_bytes("sd1", 2048, 2048, 1, 2, memory_efficient_attention=False)
    sdpa = estimate_activation_bytes("sd1", 2048, 2048, 1, 2)
    assert naive.denoise_bytes > 10 * sdpa.denoise_bytes
    assert naive.vae_decode_bytes > sdpa.vae_decode_bytes
    # Turbo models run without guidance: half the denoising batch.
    no_cfg = estimate_activation_bytes("sd1", 512, 512, 1, 2, classifier_free_guidance=False)
    assert no_cfg.denoise_bytes < small.denoise_bytes


def test_the_vae_decode_dominates_at_large_sizes_and_tiling_bounds_it() -> None:
    for family in ("sd1", "sd2", "sdxl"):
        big = estimate_activation_bytes(family, 2048, 2048, 4, 2)
        assert big.vae_decode_bytes > big.denoise_bytes
        assert big.vae_decode_tiled_bytes < big.vae_decode_bytes / 4
    # At or below the VAE's tile size diffusers does not tile; slicing alone helps only batches.
    sdxl = estimate_activation_bytes("sdxl", 1024, 1024, 1, 2)
    assert sdxl.vae_decode_tiled_bytes == sdxl.vae_decode_bytes


def test_unknown_family_is_refused() -> None:
    with pytest.raises(ValueError, match="family must be one of sd1, sd2, sdxl"):
        estimate_activation_bytes("flux", 1024, 1024, 1, 2)


def test_footprint_properties() -> None:
    assert SDXL.total_bytes == int(5.1 * GB) + int(0.25 * GB) + int(1.35 * GB) + int(0.17 * GB)
    assert SDXL.largest_component_bytes == int(5.1 * GB)
    assert ModelFootprint(denoiser_bytes=10).largest_component_bytes == 10


# ----- a tiny real pipeline on the CPU -----


@pytest.fixture
def tiny_pipe() -> StableDiffusionPipeline:
    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64),
        layers_per_block=1,
        sample_size=16,
        in_channels=4,
        out_channels=4,
        cross_attention_dim=32,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
    )
    # sample_size=32 makes diffusers tile any image larger than 32 px, so the tiled path really runs at 64 px.
    vae = AutoencoderKL(
        block_out_channels=(32, 64),
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        latent_channels=4,
        sample_size=32,
    )
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            hidden_size=32, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2, vocab_size=1000
        )
    )
    pipe = StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=None, unet=unet, scheduler=DDIMScheduler(clip_sample=False),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )  # fmt: skip
    pipe.set_progress_bar_config(disable=True)
    return pipe


def generate(pipe: StableDiffusionPipeline) -> np.ndarray:
    embeddings = torch.randn(1, 77, 32, generator=torch.Generator().manual_seed(1))
    return pipe(
        prompt_embeds=embeddings,
        negative_prompt_embeds=torch.zeros_like(embeddings),
        num_inference_steps=2,
        height=64,
        width=64,
        generator=torch.Generator().manual_seed(0),
        output_type="np",
    ).images


def has_accelerate_hooks(pipe: StableDiffusionPipeline) -> bool:
    return any(hasattr(module, "_hf_hook") for component in components(pipe) for module in component.modules())


def has_group_offload_hooks(pipe: StableDiffusionPipeline) -> bool:
    return any(
        module._diffusers_hook.get_hook("group_offloading") is not None
        for component in components(pipe)
        for module in component.modules()
        if hasattr(module, "_diffusers_hook")
    )


def components(pipe: StableDiffusionPipeline) -> list[torch.nn.Module]:
    return [c for c in pipe.components.values() if isinstance(c, torch.nn.Module)]


def test_footprint_of_measures_each_component(tiny_pipe: StableDiffusionPipeline) -> None:
    def size(module: torch.nn.Module) -> int:
        return sum(t.numel() * t.element_size() for t in (*module.parameters(), *module.buffers()))

    footprint = footprint_of(tiny_pipe)
    assert footprint.denoiser_bytes == size(tiny_pipe.unet)
    assert footprint.text_encoder_bytes == (size(tiny_pipe.text_encoder),)
    assert footprint.vae_bytes == size(tiny_pipe.vae)
    assert footprint.other_bytes == 0
    assert footprint_of(tiny_pipe.to(torch.bfloat16)).total_bytes == pytest.approx(footprint.total_bytes / 2, rel=0.01)


def test_resident_and_vae_tiling_apply_and_reset_on_cpu(tiny_pipe: StableDiffusionPipeline) -> None:
    apply_memory_plan(tiny_pipe, MemoryPlan.RESIDENT, "cpu")
    assert not tiny_pipe.vae.use_tiling and not tiny_pipe.vae.use_slicing
    plain = generate(tiny_pipe)
    assert plain.shape == (1, 64, 64, 3) and np.isfinite(plain).all()

    apply_memory_plan(tiny_pipe, "vae_tiling", "cpu")
    assert tiny_pipe.vae.use_tiling and tiny_pipe.vae.use_slicing
    tiled = generate(tiny_pipe)
    assert tiled.shape == plain.shape and np.isfinite(tiled).all()
    assert not np.array_equal(tiled, plain)  # the tiles really were decoded separately

    reset_memory_plan(tiny_pipe)
    assert not tiny_pipe.vae.use_tiling and not tiny_pipe.vae.use_slicing
    np.testing.assert_array_equal(generate(tiny_pipe), plain)


@pytest.mark.parametrize("plan", [M, G, S])
def test_offload_plans_need_an_accelerator(tiny_pipe: StableDiffusionPipeline, plan: MemoryPlan) -> None:
    with pytest.raises(ValueError, match="needs an accelerator device"):
        apply_memory_plan(tiny_pipe, plan, "cpu")
    assert not has_accelerate_hooks(tiny_pipe) and not has_group_offload_hooks(tiny_pipe)


# diffusers itself accepts an explicit `cpu` device for its offload APIs, which lets the undo be tested here.
OFFLOADS_ONTO_THE_CPU = {
    "model_offload": lambda pipe: pipe.enable_model_cpu_offload(device="cpu"),
    "sequential_offload": lambda pipe: pipe.enable_sequential_cpu_offload(device="cpu"),
    "group_offload": lambda pipe: pipe.enable_group_offload(
        onload_device=torch.device("cpu"), offload_type="block_level", num_blocks_per_group=1
    ),
}


@pytest.mark.parametrize("offload", list(OFFLOADS_ONTO_THE_CPU))
def test_reset_removes_diffusers_offload_hooks(tiny_pipe: StableDiffusionPipeline, offload: str) -> None:
    plain = generate(tiny_pipe)
    OFFLOADS_ONTO_THE_CPU[offload](tiny_pipe)
    tiny_pipe.vae.enable_tiling()
    assert has_accelerate_hooks(tiny_pipe) or has_group_offload_hooks(tiny_pipe)
    if offload == "sequential_offload":
        # accelerate cannot run sequential offload with `cpu` as the execution device; the parked weights suffice.
        assert tiny_pipe.unet.conv_in.weight.device.type == "meta"
    else:
        generate(tiny_pipe)

    reset_memory_plan(tiny_pipe)
    assert not has_accelerate_hooks(tiny_pipe) and not has_group_offload_hooks(tiny_pipe)
    assert not tiny_pipe.vae.use_tiling
    # Weights sequential offload parked on `meta` are back, and the pipeline behaves as before.
    assert all(p.device.type == "cpu" for component in components(tiny_pipe) for p in component.parameters())
    apply_memory_plan(tiny_pipe, MemoryPlan.RESIDENT, "cpu")
    np.testing.assert_array_equal(generate(tiny_pipe), plain)


def _accelerator() -> str | None:
    if torch.cuda.is_available():
        return "cuda:0"
    if hasattr(torch, "xpu") and torch.xpu.is_available():
        return "xpu:0"
    if torch.backends.mps.is_available():
        return "mps"
    return None


@pytest.mark.skipif(_accelerator() is None, reason="offload plans need an accelerator")
def test_every_plan_generates_on_the_accelerator(tiny_pipe: StableDiffusionPipeline) -> None:
    device = _accelerator()
    plan: MemoryPlan | None = MemoryPlan.RESIDENT
    while plan is not None:
        apply_memory_plan(tiny_pipe, plan, device)
        image = generate(tiny_pipe)
        assert image.shape == (1, 64, 64, 3) and np.isfinite(image).all(), plan
        plan = escalate(plan)
    reset_memory_plan(tiny_pipe)
    assert not has_accelerate_hooks(tiny_pipe) and not has_group_offload_hooks(tiny_pipe)
