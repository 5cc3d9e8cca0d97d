"""The torch backend's GPU fast path: its choices as a table (no GPU needed), fused QKV on a real tiny UNet, the
per-request eager stance, and the setting as users spell it."""

from __future__ import annotations

import pytest
import torch

from imgtools_mcp.config import Settings
from imgtools_mcp.engine.backends.fast_path import (
    FastPath,
    apply_fast_path,
    compile_stance,
    eager_reason,
    plan_fast_path,
    unfuse_for_loras,
)
from imgtools_mcp.engine.choice import Choice
from imgtools_mcp.engine.device import DeviceFacts

H200 = DeviceFacts(kind="cuda", name="NVIDIA H200", index=0, total_memory_bytes=141 * 2**30, free_memory_bytes=140 * 2**30,
                   supports_bf16=True, supports_fp16=True, compute_capability=(9, 0))  # fmt: skip
T4 = DeviceFacts(kind="cuda", name="Tesla T4", index=0, total_memory_bytes=16 * 2**30, free_memory_bytes=15 * 2**30,
                 supports_bf16=False, supports_fp16=True, compute_capability=(7, 5))  # fmt: skip
CPU = DeviceFacts(kind="cpu", name="cpu", index=None, total_memory_bytes=24 * 2**30, free_memory_bytes=20 * 2**30,
                  supports_bf16=True, supports_fp16=False)  # fmt: skip


@pytest.mark.parametrize(
    "facts, setting, compile_mode, fused",
    [
        (H200, "auto", "cudagraphs", True),
        (T4, "auto", "off", True),
        (CPU, "auto", "off", False),
        (CPU, "cudagraphs", "regional", False),  # CUDA graphs need CUDA: the nearest that runs
        (CPU, "true", "regional", False),  # the old boolean spelling
        (H200, "off", "off", True),
        (H200, "regional", "regional", True),
    ],
)
def test_plan_table(facts, setting, compile_mode, fused):
    path = plan_fast_path(facts, setting)
    assert path.compile.value == compile_mode
    assert path.fuse_qkv.value is fused
    assert path.channels_last.value is False and "slower" in path.channels_last.reason
    assert all(entry["reason"] for entry in path.as_dict().values())


def test_setting_is_validated_with_allowed_values():
    assert Settings(torch_compile="FALSE").torch_compile == "off"
    with pytest.raises(ValueError, match="auto, off, regional, cudagraphs"):
        Settings(torch_compile="fastest")


def _tiny_unet() -> torch.nn.Module:
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    return UNet2DConditionModel(
        block_out_channels=(8, 16), layers_per_block=1, sample_size=8, in_channels=4, out_channels=4,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=16, attention_head_dim=4, norm_num_groups=4,
    ).eval()  # fmt: skip


class _Pipe:
    def __init__(self, unet: torch.nn.Module) -> None:
        self.unet = unet


def test_fused_qkv_computes_the_same_and_unfuses_for_loras():
    unet = _tiny_unet()
    inputs = (torch.randn(1, 4, 8, 8), torch.tensor([10]), torch.randn(1, 5, 16))
    with torch.inference_mode():
        before = unet(*inputs).sample
    pipe = _Pipe(unet)
    path = FastPath(Choice("off", "test"), Choice(True, "test"), Choice("sdpa", "test"), Choice(False, "test"))
    done = apply_fast_path(pipe, path)
    assert done == ["unet: QKV projections fused"]
    processors = {type(p).__name__ for p in unet.attn_processors.values()}
    assert any("Fused" in name for name in processors), processors
    with torch.inference_mode():
        fused = unet(*inputs).sample
    torch.testing.assert_close(fused, before, rtol=1e-4, atol=1e-5)
    assert unfuse_for_loras(pipe) is not None
    assert not any("Fused" in type(p).__name__ for p in unet.attn_processors.values())
    assert unfuse_for_loras(pipe) is None  # once per model


def test_eager_reasons_for_requests_a_compiled_graph_cannot_serve():
    unet = _tiny_unet()
    pipe = _Pipe(unet)
    args = dict(plan="resident", loras_active=False, speed="quality", extras=False)
    assert eager_reason(pipe, **args) is None  # not compiled: nothing to bypass
    unet.compile(fullgraph=True, dynamic=False)
    unet._imgtools_compiled = True
    assert eager_reason(pipe, **args) is None
    assert "LoRA" in eager_reason(pipe, **{**args, "loras_active": True})
    assert "model_offload" in eager_reason(pipe, **{**args, "plan": "model_offload"})
    assert "speed=fast" in eager_reason(pipe, **{**args, "speed": "fast"})
    assert "ControlNet" in eager_reason(pipe, **{**args, "extras": True})
    # Forced eager really skips compilation: no graph is made for this call.
    import torch._dynamo

    torch._dynamo.reset()
    counters = torch._dynamo.utils.counters
    counters.clear()
    with compile_stance("test"), torch.inference_mode():
        unet(torch.randn(1, 4, 8, 8), torch.tensor([10]), torch.randn(1, 5, 16))
    assert not counters["stats"].get("unique_graphs")
