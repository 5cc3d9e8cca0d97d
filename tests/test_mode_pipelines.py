"""The img2img and inpaint pipelines are built on the loaded text-to-image pipeline's own modules; building them
must leave those modules exactly as they were, so a plain image after an edit or an inpaint is the one before it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from mcp import Client

from imgtools_mcp.config import Settings
from imgtools_mcp.server import build_server
from imgtools_mcp.testing import make_test_model

from test_families_contract import data_url, first, pattern, pixels_of

pytestmark = pytest.mark.anyio

FAMILIES = ["z-image-turbo", "qwen-image"]
ARGS = {"prompt": "a lighthouse at dusk", "width": 64, "height": 64, "steps": 2, "seed": 7}


@pytest.mark.parametrize("builder", FAMILIES)
async def test_plain_image_after_edit_and_inpaint_is_unchanged(builder: str, tmp_path: Path) -> None:
    # bf16 whatever the CPU: the text encoders' float32 rotary buffers would be rounded by a cast to the model dtype.
    model = make_test_model(tmp_path / builder, builder)
    settings = Settings(model=str(model), output_dir=tmp_path / "out", device="cpu", hf_offline=True, dtype="bf16")
    source = pattern(64)
    async with Client(build_server(settings)) as client:
        before = first(await client.call_tool("generate", ARGS))
        first(await client.call_tool("edit", {**ARGS, "image": data_url(source), "strength": 0.5}))
        first(await client.call_tool("inpaint", {
            **ARGS, "image": data_url(source), "mask_blur": 0,
            "mask_shapes": [{"type": "rect", "x": 16, "y": 16, "width": 32, "height": 32}],
        }))
        after = first(await client.call_tool("generate", ARGS))
        status = (await client.call_tool("engine_status", {})).structured_content
    assert status["dtype"] == "bf16"
    assert np.array_equal(pixels_of(after), pixels_of(before))
