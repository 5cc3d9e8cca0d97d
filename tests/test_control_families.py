"""ControlNets beyond SD 1.x's one-type path, through the MCP client on tiny real pipelines: SD 3.5's one-type
ControlNet, the SDXL and FLUX.1 union ControlNets with their control modes, and the Qwen-Image and Z-Image unions.

Each tiny ControlNet is saved under the name of the registry's default for the family and type, in a folder given
as IMGTOOLS_CONTROLNET_DIRS, so the entries run without `model` as they would with the real weights downloaded.
"""

from __future__ import annotations

import base64
import io
from pathlib import Path

import numpy as np
import pytest
from mcp import Client
from PIL import Image, ImageDraw

from imgtools_mcp.config import Settings
from imgtools_mcp.engine.control_registry import CONTROLNETS, supported_pairs
from imgtools_mcp.infotext import parse_infotext
from imgtools_mcp.server import build_server
from imgtools_mcp.testing import make_test_model
from imgtools_mcp.testing import tiny_controlnet

pytestmark = pytest.mark.anyio

BASE = {"prompt": "a ball", "width": 64, "height": 64, "steps": 2, "seed": 7}


def drawing_url() -> str:
    drawing = Image.new("RGB", (64, 64), "black")
    ImageDraw.Draw(drawing).ellipse((12, 8, 52, 56), fill="white")
    buffer = io.BytesIO()
    drawing.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def pixels(result) -> np.ndarray:
    assert not result.is_error, result.content
    return np.asarray(Image.open(result.structured_content["images"][0]["path"]).convert("RGB"), dtype=np.float64)


def infotext_of(result) -> dict[str, str]:
    _, _, fields = parse_infotext(Image.open(result.structured_content["images"][0]["path"]).text["parameters"])
    return fields


def default_name(family: str, union: bool, kind: str = "canny") -> str:
    table = CONTROLNETS[family]
    return (table.union if union else table.dedicated[kind]).rsplit("/", 1)[-1]


async def control_runs(tmp_path: Path, model: Path, controlnets: Path, entry: dict, extra: dict | None = None):
    """Plain, controlled and weight-0 runs with one seed, and the controlled result."""
    settings = Settings(model=str(model), output_dir=tmp_path / "out", device="cpu", hf_offline=True, controlnet_dirs=[controlnets])
    arguments = {**BASE, **(extra or {})}
    async with Client(build_server(settings)) as client:
        plain = await client.call_tool("generate", arguments)
        controlled = await client.call_tool("generate", {**arguments, "control": [{**entry, "image": drawing_url()}]})
        silent = await client.call_tool("generate", {**arguments, "control": [{**entry, "image": drawing_url(), "weight": 0}]})
        again = await client.call_tool("generate", arguments)
    # The ControlNet pipeline shares the model's weights: a plain run after it gives the same image as before it.
    assert np.array_equal(pixels(again), pixels(plain))
    return pixels(plain), pixels(controlled), pixels(silent), controlled


def assert_control_acts(plain: np.ndarray, controlled: np.ndarray, silent: np.ndarray) -> None:
    changed = np.abs(controlled - plain).mean()
    assert changed > 1, f"the ControlNet had no effect ({changed:.3f})"
    difference = np.abs(silent - plain)
    assert difference.max() <= 1, (difference.mean(), difference.max(), changed)


async def test_sd3_controlnet_changes_the_image_and_weight_zero_does_not(tmp_path: Path) -> None:
    from imgtools_mcp.testing.tiny_sd3 import make_tiny_sd3

    sd3 = make_tiny_sd3(tmp_path / "tiny-sd3", num_layers=2)  # the last block takes no ControlNet residual
    tiny_controlnet.make_test_sd3_controlnet(sd3, tmp_path / "controlnets" / default_name("sd3", False, "canny"))
    plain, controlled, silent, result = await control_runs(tmp_path, sd3, tmp_path / "controlnets", {"type": "canny"})
    assert_control_acts(plain, controlled, silent)
    (used,) = result.structured_content["parameters"]["control"]
    assert used["controlnet"] == "stable-diffusion-3.5-large-controlnet-canny" and used["union"] is False
    assert used["control_mode"] is None
    assert "Model: stable-diffusion-3.5-large-controlnet-canny," in infotext_of(result)["ControlNet 0"]


async def test_sdxl_union_controlnet_runs_with_the_types_mode(tmp_path: Path, tiny_sdxl: Path) -> None:
    tiny_controlnet.make_test_sdxl_union_controlnet(tiny_sdxl, tmp_path / "controlnets" / default_name("sdxl", True))
    # lineart has no one-type SDXL ControlNet in the registry: it runs on the union, in mode 3 (canny/lineart/mlsd).
    plain, controlled, silent, result = await control_runs(tmp_path, tiny_sdxl, tmp_path / "controlnets", {"type": "lineart"})
    assert_control_acts(plain, controlled, silent)
    (used,) = result.structured_content["parameters"]["control"]
    assert (used["controlnet"], used["union"], used["control_mode"]) == ("controlnet-union-sdxl-1.0", True, 3)
    assert "Model: controlnet-union-sdxl-1.0, Union Mode: 3, Weight: 1" in infotext_of(result)["ControlNet 0"]


async def test_sdxl_union_runs_two_entries_and_refuses_a_mode_the_weights_lack(tmp_path: Path, tiny_sdxl: Path) -> None:
    folder = tmp_path / "controlnets"
    tiny_controlnet.make_test_sdxl_union_controlnet(tiny_sdxl, folder / default_name("sdxl", True), modes=6)
    settings = Settings(model=str(tiny_sdxl), output_dir=tmp_path / "out", device="cpu", hf_offline=True, controlnet_dirs=[folder])
    async with Client(build_server(settings)) as client:
        two = await client.call_tool("generate", {**BASE, "control": [
            {"type": "canny", "image": drawing_url(), "model": "union"},
            {"type": "scribble", "image": drawing_url(), "weight": 0.5},
        ]})
        assert not two.is_error, two.content
        assert [(u["controlnet"], u["control_mode"]) for u in two.structured_content["parameters"]["control"]] == [
            ("controlnet-union-sdxl-1.0", 3), ("controlnet-union-sdxl-1.0", 2)
        ]
        # tile is mode 6, which the six-mode (non-ProMax) weights do not have.
        tile = await client.call_tool("generate", {**BASE, "control": [{"type": "tile", "image": drawing_url(), "model": "union"}]})
    assert tile.is_error and "control[0].type" in tile.content[0].text and "6 modes" in tile.content[0].text


async def test_flux_union_controlnet_runs_with_the_types_mode(tmp_path: Path) -> None:
    flux = make_test_model(tmp_path / "tiny-flux", "flux")
    tiny_controlnet.make_test_flux_union_controlnet(flux, tmp_path / "controlnets" / default_name("flux", True))
    # tile has no one-type FLUX.1 ControlNet in the registry: it runs on Union-Pro, in mode 1.
    plain, controlled, silent, result = await control_runs(tmp_path, flux, tmp_path / "controlnets", {"type": "tile"})
    assert_control_acts(plain, controlled, silent)
    (used,) = result.structured_content["parameters"]["control"]
    assert (used["controlnet"], used["union"], used["control_mode"]) == ("FLUX.1-dev-ControlNet-Union-Pro", True, 1)
    assert "Model: FLUX.1-dev-ControlNet-Union-Pro, Union Mode: 1," in infotext_of(result)["ControlNet 0"]


def test_the_unsupported_pair_error_names_every_family_in_the_table() -> None:
    pairs = supported_pairs()
    assert [pair.split(":")[0] for pair in pairs] == list(CONTROLNETS)
    assert any(pair.startswith("sd3: canny, depth, tile") and "generate only" in pair for pair in pairs), pairs


async def test_qwen_image_union_controlnet_changes_the_image_and_weight_zero_does_not(tmp_path: Path) -> None:
    qwen = make_test_model(tmp_path / "Qwen-Image", "qwen-image")
    tiny_controlnet.make_test_qwen_image_controlnet(qwen, tmp_path / "controlnets" / default_name("qwen-image", True))
    plain, controlled, silent, result = await control_runs(tmp_path, qwen, tmp_path / "controlnets", {"type": "canny"})
    assert_control_acts(plain, controlled, silent)
    (used,) = result.structured_content["parameters"]["control"]
    assert (used["controlnet"], used["union"], used["control_mode"]) == ("Qwen-Image-ControlNet-Union", True, None)
    assert "Model: Qwen-Image-ControlNet-Union, Weight: 1" in infotext_of(result)["ControlNet 0"]


async def test_z_image_union_controlnet_runs_one_entry_on_every_step(tmp_path: Path) -> None:
    z_image = make_test_model(tmp_path / "Z-Image-Turbo", "z-image-turbo")
    folder = tmp_path / "controlnets"
    tiny_controlnet.make_test_z_image_controlnet(z_image, folder / default_name("z-image", True))
    plain, controlled, silent, result = await control_runs(tmp_path, z_image, folder, {"type": "canny"})
    assert_control_acts(plain, controlled, silent)
    (used,) = result.structured_content["parameters"]["control"]
    assert (used["controlnet"], used["union"]) == ("Z-Image-Turbo-Fun-Controlnet-Union", True)
    settings = Settings(model=str(z_image), output_dir=tmp_path / "out", device="cpu", hf_offline=True, controlnet_dirs=[folder])
    async with Client(build_server(settings)) as client:
        window = await client.call_tool("generate", {**BASE, "control": [{"type": "canny", "image": drawing_url(), "end": 0.5}]})
        two = await client.call_tool("generate", {**BASE, "control": [{"type": "canny", "image": drawing_url()}] * 2})
        scribble = await client.call_tool("generate", {**BASE, "control": [{"type": "scribble", "image": drawing_url()}]})
        inpaint = await client.call_tool("inpaint", {
            "prompt": "x", "image": drawing_url(), "mask": drawing_url(), "steps": 2,
            "control": [{"type": "canny", "image": drawing_url()}],
        })
    assert window.is_error and "control[0].start" in window.content[0].text and "every step" in window.content[0].text
    assert two.is_error and "1 ControlNet entry" in two.content[0].text
    # The unsupported pair names what runs, from the registry.
    assert scribble.is_error and "control[0].type" in scribble.content[0].text
    assert "z-image: canny (union), lineart (union), depth (union), pose (union)" in scribble.content[0].text
    assert inpaint.is_error and "generate only" in inpaint.content[0].text
