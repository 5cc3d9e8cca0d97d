"""Every script in examples/ runs, against tiny local models and the loopback VLM, so none can rot."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from openai_loopback import OpenAILoopback
from server_process import SUITE_SETTINGS

pytestmark = pytest.mark.slow
EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def example_env(model: Path, output: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("IMGTOOLS_", "OPENROUTER_")) or k in SUITE_SETTINGS}
    env.update(IMGTOOLS_MODEL=str(model), IMGTOOLS_OUTPUT_DIR=str(output), IMGTOOLS_DEVICE="cpu", HF_HUB_OFFLINE="1", **extra)
    return env


def run_example(name: str, args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, str(EXAMPLES / name), *args], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    return proc


def test_assistant_session(tiny_sd15: Path, tmp_path: Path) -> None:
    proc = run_example("assistant_session.py", ["--size", "64", "--steps", "2"], example_env(tiny_sd15, tmp_path / "out"))
    lines = proc.stdout.splitlines()
    assert any(line.startswith("< generate: 1 image(s) 64x64") for line in lines), proc.stdout
    assert any(line.startswith("< edit:") for line in lines) and any(line.startswith("< inpaint:") for line in lines)
    assert len(list((tmp_path / "out").glob("*.png"))) == 3


def test_agent_refine(tiny_sd15: Path, tmp_path: Path) -> None:
    with OpenAILoopback(api_key="example-key") as loopback:
        env = example_env(tiny_sd15, tmp_path / "out", IMGTOOLS_VLM_BASE_URL=loopback.base_url, IMGTOOLS_VLM_API_KEY="example-key")
        proc = run_example("agent_refine.py", ["a bright square", "--rounds", "2", "--size", "64", "--steps", "2"], env)
        assert loopback.problems == []
        kinds = [r.kind for r in loopback.chat_requests]
    assert "critique" in kinds
    assert "started job-" in proc.stdout
    assert "round 1:" in proc.stdout and "best: imgtools://images/" in proc.stdout
