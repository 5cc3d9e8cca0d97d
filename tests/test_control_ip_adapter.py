"""IP-Adapter reference images through the engine on a tiny SD 1.5: the reference steers the image, weight 0 does not,
and the adapter is gone again for the next plain request."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from imgtools_mcp.config import Settings
from imgtools_mcp.engine.engine import Engine
from imgtools_mcp.engine.errors import InvalidRequestError
from imgtools_mcp.engine.request import EngineRequest
from imgtools_mcp.testing.tiny_ip_adapter import make_test_ip_adapter

pytestmark = pytest.mark.anyio


@pytest.fixture(scope="module")
def adapter_dir(tmp_path_factory: pytest.TempPathFactory, tiny_models: dict[str, Path]) -> Path:
    """A LoRA folder holding an `IP-Adapter/` laid out like the hub repo h94/IP-Adapter."""
    folder = tmp_path_factory.mktemp("loras")
    make_test_ip_adapter(tiny_models["sd15"], folder / "IP-Adapter")
    return folder


def reference() -> Image.Image:
    rng = np.random.default_rng(3)
    return Image.fromarray((rng.random((48, 48, 3)) * 255).astype(np.uint8))


async def test_reference_image_steers_and_leaves_no_trace(tmp_path: Path, tiny_models: dict[str, Path], adapter_dir: Path) -> None:
    engine = Engine(Settings(model=str(tiny_models["sd15"]), output_dir=tmp_path, device="cpu", hf_offline=True, lora_dirs=[adapter_dir]))

    async def run(extra: dict) -> np.ndarray:
        request = EngineRequest(mode="txt2img", model=None, prompt="a ball", width=64, height=64, steps=2, seeds=[9], extra=extra)
        return np.asarray((await engine.generate(await engine.acheck(request))).images[0], dtype=np.float64)

    plain = await run({})
    steered = await run({"ip_adapter": [(reference(), 1.0)]})
    silent = await run({"ip_adapter": [(reference(), 0.0)]})
    after = await run({})
    assert np.abs(steered - plain).mean() > 2, "the reference image had no effect"
    assert np.abs(silent - plain).max() <= 1
    assert np.array_equal(after, plain), "the adapter stayed loaded after its request"


def test_ip_adapter_errors_name_the_parameter(tmp_path: Path, tiny_models: dict[str, Path], adapter_dir: Path) -> None:
    request = EngineRequest(mode="txt2img", model=None, prompt="x", steps=2, extra={"ip_adapter": [(reference(), 3.0)]})
    engine = Engine(Settings(model=str(tiny_models["sd15"]), output_dir=tmp_path, device="cpu", hf_offline=True, lora_dirs=[adapter_dir]))
    with pytest.raises(InvalidRequestError, match=r"reference_images\[0\]\.weight: must be within 0-2"):
        engine.check(request)
    bare = Engine(Settings(model=str(tiny_models["sd15"]), output_dir=tmp_path, device="cpu", hf_offline=True))
    request.extra["ip_adapter"] = [(reference(), 1.0)]
    with pytest.raises(InvalidRequestError, match="reference_images: the IP-Adapter h94/IP-Adapter/models/ip-adapter_sd15.safetensors is not in"):
        bare.check(request)


async def test_edit_restyles_with_a_reference_image_through_the_client(tmp_path: Path, tiny_models: dict[str, Path], adapter_dir: Path) -> None:
    import base64
    import io

    from mcp import Client

    from imgtools_mcp.infotext import parse_infotext
    from imgtools_mcp.server import build_server

    def data_url(image: Image.Image) -> str:
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()

    settings = Settings(model=str(tiny_models["sd15"]), output_dir=tmp_path / "out", device="cpu", hf_offline=True, lora_dirs=[adapter_dir])
    edit = {"prompt": "in this style", "image": data_url(Image.new("RGB", (64, 64), (90, 120, 150))), "steps": 2, "seed": 2}
    async with Client(build_server(settings)) as client:
        plain = await client.call_tool("edit", edit)
        styled = await client.call_tool("edit", {**edit, "reference_images": [{"image": data_url(reference()), "weight": 1.0}]})
    assert not plain.is_error and not styled.is_error, styled.content

    def pixels(result) -> np.ndarray:
        return np.asarray(Image.open(result.structured_content["images"][0]["path"]).convert("RGB"), dtype=np.float64)

    assert np.abs(pixels(styled) - pixels(plain)).mean() > 1
    data = styled.structured_content
    assert data["parameters"]["reference_images"][0]["weight"] == 1.0
    assert any("IP-Adapter" in warning for warning in data["warnings"])
    _, _, fields = parse_infotext(Image.open(data["images"][0]["path"]).text["parameters"])
    assert fields["IP-Adapter"].endswith(":1")


def _data_url(image: Image.Image) -> str:
    import base64
    import io

    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def _pixels(result) -> np.ndarray:
    return np.asarray(Image.open(result.structured_content["images"][0]["path"]).convert("RGB"), dtype=np.int16)


async def test_generate_and_inpaint_take_reference_images_through_the_client(
    tmp_path: Path, tiny_models: dict[str, Path], adapter_dir: Path
) -> None:
    from mcp import Client

    from imgtools_mcp.server import build_server

    settings = Settings(model=str(tiny_models["sd15"]), output_dir=tmp_path / "out", device="cpu", hf_offline=True, lora_dirs=[adapter_dir])
    generate = {"prompt": "a ball", "width": 64, "height": 64, "steps": 2, "seed": 4}
    ref = _data_url(reference())
    picture = Image.new("RGB", (64, 64), (90, 120, 150))
    inpaint = {"prompt": "a ball", "image": _data_url(picture), "mask_shapes": [{"type": "rect", "x": 16, "y": 16, "width": 32, "height": 32}],
               "mask_blur": 0, "steps": 2, "seed": 4, "reference_images": [{"image": ref}]}
    async with Client(build_server(settings)) as client:
        plain = await client.call_tool("generate", generate)
        steered = await client.call_tool("generate", {**generate, "reference_images": [{"image": ref, "weight": 1.0}]})
        silent = await client.call_tool("generate", {**generate, "reference_images": [{"image": ref, "weight": 0.0}]})
        painted = await client.call_tool("inpaint", inpaint)
    for result in (plain, steered, silent, painted):
        assert not result.is_error, result.content
    assert np.abs(_pixels(steered) - _pixels(plain)).mean() > 1, "the reference image had no effect on generate"
    assert np.array_equal(_pixels(silent), _pixels(plain)), "weight 0 must run as no reference"
    assert steered.structured_content["parameters"]["reference_mechanism"] == "ip-adapter"
    assert silent.structured_content["parameters"]["reference_mechanism"] == "none"
    assert painted.structured_content["parameters"]["reference_mechanism"] == "ip-adapter"
    outside = np.ones((64, 64), dtype=bool)
    outside[16:48, 16:48] = False
    assert np.array_equal(_pixels(painted)[outside], np.asarray(picture, dtype=np.int16)[outside])


async def test_a_family_without_a_reference_mechanism_is_a_tool_error(tmp_path: Path) -> None:
    from mcp import Client

    from imgtools_mcp.server import build_server
    from imgtools_mcp.testing import make_test_model

    model = make_test_model(tmp_path / "tiny-sd3", "sd3")
    settings = Settings(model=str(model), output_dir=tmp_path / "out", device="cpu", hf_offline=True)
    async with Client(build_server(settings)) as client:
        result = await client.call_tool(
            "generate", {"prompt": "x", "width": 64, "height": 64, "steps": 2, "reference_images": [{"image": _data_url(reference())}]}
        )
    assert result.is_error
    text = result.content[0].text
    assert "reference_images" in text and "SD 3/3.5" in text
    assert "FLUX.2" in text and "through IP-Adapter: " in text and "SD 1.x" in text
