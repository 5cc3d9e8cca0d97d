"""Single-file DiT transformers (as FLUX.1, Chroma, SD 3.5, Qwen-Image and Z-Image files are published: the transformer
alone) run in the pipeline of a same-family diffusers folder, through the MCP client.

The files here are the tiny transformers' weights in diffusers' own layout: diffusers' converters from the original
layouts have the real models' widths built in (FLUX's splits its fused projections at 3072), so a tiny model cannot
be written in those layouts. Recognising original-layout names is tested in test_families.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from mcp import Client
from PIL import Image
from safetensors.torch import load_file, save_file

from imgtools_mcp.config import Settings
from imgtools_mcp.server import build_server
from imgtools_mcp.testing import make_test_model

pytestmark = pytest.mark.anyio

# make_test_model's builder -> the family id the file must be recognised as
FAMILIES = {"flux": "flux", "chroma": "chroma", "sd3": "sd3", "qwen-image": "qwen-image", "z-image-turbo": "z-image"}
ARGS = {"prompt": "a red barn", "width": 64, "height": 64, "steps": 2, "seed": 5}


@pytest.fixture(scope="module")
def library(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model folder per family and, beside it, that folder's transformer as one .safetensors file."""
    root = tmp_path_factory.mktemp("single-file-dit")
    for builder in FAMILIES:
        folder = make_test_model(root / f"tiny-{builder}", builder)
        weights = load_file(str(folder / "transformer" / "diffusion_pytorch_model.safetensors"))
        save_file(weights, str(root / f"{builder}-transformer.safetensors"))
    return root


def pixels(result) -> np.ndarray:
    assert not result.is_error, result.content[0].text
    return np.asarray(Image.open(result.structured_content["images"][0]["path"]).convert("RGB"))


@pytest.mark.parametrize("builder", sorted(FAMILIES))
async def test_a_transformer_file_runs_in_its_family_folders_pipeline(library: Path, tmp_path: Path, builder: str) -> None:
    folder, file = library / f"tiny-{builder}", library / f"{builder}-transformer.safetensors"
    settings = Settings(model=str(folder), output_dir=tmp_path / "out", device="cpu", hf_offline=True, model_dirs=[library])
    async with Client(build_server(settings)) as client:
        from_folder = await client.call_tool("generate", ARGS)
        from_file = await client.call_tool("generate", {**ARGS, "model": str(file)})
    assert np.array_equal(pixels(from_file), pixels(from_folder))  # the same weights, the same seed
    image = from_file.structured_content["images"][0]
    sidecar = json.loads(Path(image["path"].removesuffix(".png") + ".json").read_text())["model"]
    assert (sidecar["kind"], sidecar["family"], sidecar["name"]) == ("file", FAMILIES[builder], f"{builder}-transformer")


async def test_a_transformer_file_without_a_family_folder_says_what_it_needs(library: Path, tmp_path: Path) -> None:
    lonely = tmp_path / "models"
    lonely.mkdir()
    (lonely / "flux-transformer.safetensors").symlink_to(library / "flux-transformer.safetensors")
    settings = Settings(model=str(library / "tiny-sd3"), output_dir=tmp_path / "out", device="cpu", hf_offline=True,
                        model_dirs=[lonely])
    async with Client(build_server(settings)) as client:
        result = await client.call_tool("generate", {**ARGS, "model": str(lonely / "flux-transformer.safetensors")})
    assert result.is_error
    text = result.content[0].text
    assert "\n" not in text and "FLUX.1" in text and "diffusers folder" in text and "IMGTOOLS_MODEL_DIRS" in text, text
