"""examples/structure_session.py runs: pose kept by control, restyled from a reference image, "the cup" repainted by
mask_prompt, 4x upscale."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from openai_loopback import OpenAILoopback
from server_process import SUITE_SETTINGS

from imgtools_mcp.testing.tiny_controlnet import make_test_controlnet
from imgtools_mcp.testing.tiny_ip_adapter import make_test_ip_adapter
from imgtools_mcp.testing.tiny_upscaler import make_test_upscaler

pytestmark = pytest.mark.slow
EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "structure_session.py"


def test_structure_session(tiny_sd15: Path, tmp_path: Path) -> None:
    pose = make_test_controlnet(tiny_sd15, tmp_path / "controlnets" / "tiny-openpose")
    upscaler = make_test_upscaler(tmp_path / "upscalers" / "tiny-x4.pth")
    make_test_ip_adapter(tiny_sd15, tmp_path / "adapters" / "IP-Adapter")  # h94/IP-Adapter's layout, found like a LoRA
    with OpenAILoopback(api_key="example-key") as loopback:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("IMGTOOLS_", "OPENROUTER_")) or k in SUITE_SETTINGS}
        env.update(
            IMGTOOLS_MODEL=str(tiny_sd15), IMGTOOLS_OUTPUT_DIR=str(tmp_path / "out"), IMGTOOLS_DEVICE="cpu", HF_HUB_OFFLINE="1",
            IMGTOOLS_VLM_BASE_URL=loopback.base_url, IMGTOOLS_VLM_API_KEY="example-key",
            IMGTOOLS_UPSCALER_DIRS=str(upscaler.parent), IMGTOOLS_LORA_DIRS=str(tmp_path / "adapters"),
        )
        args = ["--size", "64", "--steps", "2", "--pose-controlnet", str(pose), "--upscaler", "tiny-x4"]
        proc = subprocess.run([sys.executable, str(EXAMPLE), *args], env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
        assert loopback.problems == [] and "grounding" in [r.kind for r in loopback.chat_requests]
    lines = proc.stdout.splitlines()
    assert sum(line.startswith("< generate: 1 image(s) 64x64") for line in lines) == 2, proc.stdout
    assert any(line.startswith("< edit:") for line in lines) and "  reference through: ip-adapter" in lines, proc.stdout
    assert any(line.startswith("< inpaint:") for line in lines) and any("mask used: imgtools://images/" in line for line in lines)
    assert any(line.startswith("< upscale: 64x64 -> 256x256") for line in lines), proc.stdout
