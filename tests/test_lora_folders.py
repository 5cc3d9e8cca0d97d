"""A LoRA saved by diffusers (`save_lora_weights(dir)`, the hub repos' layout) is used by its folder's name."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from mcp import Client
from PIL import Image

from imgtools_mcp.config import Settings
from imgtools_mcp.infotext import parse_infotext, split_lora_tags
from imgtools_mcp.server import build_server
from imgtools_mcp.testing.files import make_test_lora

pytestmark = pytest.mark.anyio
BASE = {"prompt": "a lighthouse", "width": 64, "height": 64, "steps": 2, "seed": 5}


@pytest.fixture(scope="module")
def lora_root(tmp_path_factory: pytest.TempPathFactory, tiny_models: dict[str, Path]) -> Path:
    root = tmp_path_factory.mktemp("lora-folders")
    saved = make_test_lora(tiny_models["sd15"], root / "tiny-lora" / "pytorch_lora_weights.safetensors", seed=3)
    # A hub repo downloaded as a folder: its own file name, a README beside it.
    (root / "hub-style").mkdir()
    shutil.copyfile(saved, root / "hub-style" / "ink_v2.safetensors")
    (root / "hub-style" / "README.md").write_text("---\nbase_model: tiny\n---\n")
    shutil.copyfile(saved, root / "flat.safetensors")
    return root


def pixels(result) -> np.ndarray:
    assert not result.is_error, result.content[0].text
    return np.asarray(Image.open(result.structured_content["images"][0]["path"]).convert("RGB"), dtype=np.int16)


async def test_a_diffusers_lora_folder_goes_by_its_name(tmp_path: Path, tiny_sd15: Path, lora_root: Path) -> None:
    settings = Settings(model=str(tiny_sd15), output_dir=tmp_path / "out", device="cpu", hf_offline=True,
                        lora_dirs=[lora_root])
    async with Client(build_server(settings)) as client:
        plain = pixels(await client.call_tool("generate", BASE))
        flat = pixels(await client.call_tool("generate", {**BASE, "loras": [{"name": "flat"}]}))
        by_folder = await client.call_tool("generate", {**BASE, "loras": [{"name": "tiny-lora"}]})
        same = [pixels(await client.call_tool("generate", {**BASE, "loras": [{"name": name}]}))
                for name in ("tiny-lora/pytorch_lora_weights", str(lora_root / "tiny-lora"), "hub-style")]
        listed = await client.call_tool("list_models", {})
    assert np.abs(flat - plain).max() > 0  # the adapter does something
    for result in (pixels(by_folder), *same):
        assert np.array_equal(result, flat)
    infotext = Image.open(by_folder.structured_content["images"][0]["path"]).text["parameters"]
    assert split_lora_tags(parse_infotext(infotext)[0])[1] == [("tiny-lora", 1.0)]
    names = {entry["name"] for entry in listed.structured_content["loras"]}
    assert {"tiny-lora", "flat", "hub-style/ink_v2"} <= names and not any("pytorch_lora_weights" in n for n in names)
