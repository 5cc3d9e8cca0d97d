"""ControlNet through the engine's public API on tiny real pipelines: control changes the image, weight 0 does not."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from imgtools_mcp.config import Settings
from imgtools_mcp.engine.control import ControlInput
from imgtools_mcp.engine.engine import Engine
from imgtools_mcp.engine.errors import InvalidRequestError
from imgtools_mcp.engine.request import EngineRequest
from imgtools_mcp.images.control_maps import make_control_map
from imgtools_mcp.testing.tiny_controlnet import make_test_controlnet
from imgtools_mcp.testing.tiny_pose import make_test_person_detector, make_test_pose_model

pytestmark = pytest.mark.anyio


@pytest.fixture(scope="module")
def controlnet_dir(tmp_path_factory: pytest.TempPathFactory, tiny_models: dict[str, Path]) -> Path:
    """Named like the registry's defaults for SD 1.5 canny and pose, so they are found in IMGTOOLS_CONTROLNET_DIRS
    without `model`."""
    folder = tmp_path_factory.mktemp("controlnets")
    make_test_controlnet(tiny_models["sd15"], folder / "control_v11p_sd15_canny")
    make_test_controlnet(tiny_models["sd15"], folder / "control_v11p_sd15_openpose", seed=1)
    return folder


@pytest.fixture(scope="module")
def pose_models(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A tiny random ViTPose and RT-DETR person detector, saved as local folders."""
    folder = tmp_path_factory.mktemp("pose")
    return make_test_pose_model(folder / "vitpose"), make_test_person_detector(folder / "rtdetr")


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory, tiny_models: dict[str, Path], controlnet_dir: Path) -> Engine:
    settings = Settings(
        model=str(tiny_models["sd15"]), output_dir=tmp_path_factory.mktemp("out"), device="cpu", hf_offline=True,
        controlnet_dirs=[controlnet_dir],
    )
    return Engine(settings)


def canny_map() -> Image.Image:
    drawing = Image.new("RGB", (64, 64), "black")
    ImageDraw.Draw(drawing).ellipse((12, 8, 52, 56), fill="white")
    return make_control_map("canny", drawing)


async def run(engine: Engine, controls: list[ControlInput] | None, mode: str = "txt2img") -> np.ndarray:
    extra = {"control": controls} if controls else {}
    request = EngineRequest(
        mode=mode, model=None, prompt="a ball", width=64, height=64, steps=2, seeds=[5], extra=extra,
        image=Image.new("RGB", (64, 64), (120, 90, 60)) if mode == "img2img" else None,
        strength=0.8 if mode == "img2img" else None,
    )
    job = await engine.acheck(request)
    output = await engine.generate(job)
    return np.asarray(output.images[0], dtype=np.float64)


@pytest.mark.parametrize("mode", ["txt2img", "img2img"])
async def test_control_changes_the_image_and_weight_zero_does_not(engine: Engine, mode: str) -> None:
    plain = await run(engine, None, mode)
    controlled = await run(engine, [ControlInput("canny", canny_map(), weight=1.0)], mode)
    changed = np.abs(controlled - plain).mean()
    # img2img runs one step here (strength 0.8 of 2) from a given picture, so the map moves it less.
    assert changed > (2 if mode == "txt2img" else 0.3), f"the ControlNet had no effect ({changed:.3f})"
    silent = await run(engine, [ControlInput("canny", canny_map(), weight=0.0)], mode)
    difference = np.abs(silent - plain)
    assert difference.max() <= 1 and difference.mean() < changed / 10, (difference.mean(), difference.max(), changed)


async def test_two_controls_and_a_window_of_steps(engine: Engine) -> None:
    single = await run(engine, [ControlInput("canny", canny_map(), weight=1.0)])
    both = await run(engine, [ControlInput("canny", canny_map()), ControlInput("canny", canny_map(), weight=1.0, start=0.0, end=0.5)])
    assert both.shape == single.shape and np.abs(both - single).mean() > 0.3  # the second acts on the first step only


def test_unsupported_pairs_and_bad_windows_name_the_parameter(tmp_path: Path, tiny_models: dict[str, Path], controlnet_dir: Path) -> None:
    sdxl = Engine(Settings(model=str(tiny_models["sdxl"]), output_dir=tmp_path, device="cpu", hf_offline=True, controlnet_dirs=[controlnet_dir]))
    request = EngineRequest(mode="txt2img", model=None, prompt="x", steps=2, extra={"control": [ControlInput("lineart", canny_map())]})
    # SDXL has no one-type lineart ControlNet in the registry, so lineart goes to its union ControlNet.
    with pytest.raises(InvalidRequestError, match=r"control\[0\]\.model: the ControlNet 'xinsir/controlnet-union-sdxl-1.0' is not in"):
        sdxl.check(request)
    sd15 = Engine(Settings(model=str(tiny_models["sd15"]), output_dir=tmp_path, device="cpu", hf_offline=True, controlnet_dirs=[controlnet_dir]))
    for control, message in [
        (ControlInput("image", canny_map()), r"control\[0\]\.model: type 'image' needs the ControlNet"),
        (ControlInput("canny", canny_map(), start=0.8, end=0.2), r"control\[0\]\.start: .*0 <= start < end <= 1"),
        (ControlInput("depth", canny_map()), r"control\[0\]\.model: the ControlNet 'lllyasviel/control_v11f1p_sd15_depth' is not in"),
    ]:
        with pytest.raises(InvalidRequestError, match=message):
            sd15.check(EngineRequest(mode="txt2img", model=None, prompt="x", steps=2, extra={"control": [control]}))


# ----- through the MCP client -----


def data_url(image: Image.Image) -> str:
    import base64
    import io

    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def drawing_url() -> str:
    drawing = Image.new("RGB", (64, 64), "black")
    ImageDraw.Draw(drawing).ellipse((12, 8, 52, 56), fill="white")
    return data_url(drawing)


@pytest.fixture
async def client(tmp_path: Path, tiny_models: dict[str, Path], controlnet_dir: Path):
    from mcp import Client

    from imgtools_mcp.server import build_server

    settings = Settings(
        model=str(tiny_models["sd15"]), output_dir=tmp_path / "out", device="cpu", hf_offline=True, controlnet_dirs=[controlnet_dir]
    )
    async with Client(build_server(settings)) as connected:
        yield connected


def pixels_of(result) -> np.ndarray:
    return np.asarray(Image.open(result.structured_content["images"][0]["path"]).convert("RGB"), dtype=np.float64)


async def test_generate_with_control_through_the_client_saves_the_map_and_records_it(client) -> None:
    from imgtools_mcp.infotext import parse_infotext

    base = {"prompt": "a ball", "width": 64, "height": 64, "steps": 2, "seed": 11}
    plain = await client.call_tool("generate", base)
    controlled = await client.call_tool("generate", {**base, "control": [{"type": "canny", "image": drawing_url()}]})
    silent = await client.call_tool("generate", {**base, "control": [{"type": "canny", "image": drawing_url(), "weight": 0}]})
    for result in (plain, controlled, silent):
        assert not result.is_error, result.content
    changed = np.abs(pixels_of(controlled) - pixels_of(plain)).mean()
    assert changed > 2
    assert np.abs(pixels_of(silent) - pixels_of(plain)).max() <= 1
    (used,) = controlled.structured_content["parameters"]["control"]
    assert used["type"] == "canny" and used["weight"] == 1.0 and used["map_uri"].endswith(used["map"])
    links = [block for block in controlled.content if block.type == "resource_link"]
    assert [link.uri for link in links][-1] == used["map_uri"] and "control map 0: canny" in links[-1].title
    # The map is an output like any other: the assistant can look at it (here: the edges of the drawn ellipse).
    output_dir = Path(controlled.structured_content["images"][0]["path"]).parent
    made = np.asarray(Image.open(output_dir / f"{used['map']}.png").convert("L"))
    assert made.shape == (64, 64) and 50 < (made > 127).sum() < 64 * 64 // 4
    _, _, fields = parse_infotext(Image.open(controlled.structured_content["images"][0]["path"]).text["parameters"])
    assert fields["ControlNet 0"].startswith("Module: canny") and used["map"] in fields["ControlNet 0"]


async def test_edit_with_control_and_bad_control_inputs_name_the_parameter(client) -> None:
    picture = data_url(Image.new("RGB", (64, 64), (120, 90, 60)))
    edited = await client.call_tool(
        "edit", {"prompt": "a ball", "image": picture, "steps": 2, "seed": 3, "control": [{"type": "canny", "image": drawing_url()}]}
    )
    assert not edited.is_error, edited.content
    for control, named in [
        ({"type": "sketch", "image": drawing_url()}, "control.0.type"),
        ({"type": "canny", "image": drawing_url(), "start": 0.9, "end": 0.1}, "control.0"),
        ({"type": "canny", "image": "no-such-output"}, "control[0].image"),
        ({"type": "image", "image": drawing_url()}, "control[0].model"),
    ]:
        result = await client.call_tool("generate", {"prompt": "x", "width": 64, "height": 64, "steps": 2, "control": [control]})
        assert result.is_error, control
        assert named in result.content[0].text, result.content[0].text


async def test_generate_with_a_pose_control_makes_the_skeleton_and_runs_the_pose_controlnet(
    tmp_path: Path, tiny_models: dict[str, Path], controlnet_dir: Path, pose_models: tuple[Path, Path]
) -> None:
    from mcp import Client

    from imgtools_mcp.images.control_maps import OPENPOSE_COLORS
    from imgtools_mcp.server import build_server

    pose_model, detector = pose_models
    settings = Settings(
        model=str(tiny_models["sd15"]), output_dir=tmp_path / "out", device="cpu", hf_offline=True,
        controlnet_dirs=[controlnet_dir], pose_model=str(pose_model), person_detector=str(detector),
    )
    photo = Image.new("RGB", (64, 64), (90, 120, 150))
    ImageDraw.Draw(photo).rectangle((24, 8, 40, 60), fill=(200, 170, 140))
    base = {"prompt": "a dancer", "width": 64, "height": 64, "steps": 2, "seed": 4}
    async with Client(build_server(settings)) as client:
        plain = await client.call_tool("generate", base)
        posed = await client.call_tool("generate", {**base, "control": [{"type": "pose", "image": data_url(photo)}]})
    assert not plain.is_error and not posed.is_error, posed.content
    (used,) = posed.structured_content["parameters"]["control"]
    assert used["type"] == "pose" and used["controlnet"].endswith("control_v11p_sd15_openpose"), used
    assert np.abs(pixels_of(posed) - pixels_of(plain)).mean() > 1  # the pose ControlNet ran
    output_dir = Path(posed.structured_content["images"][0]["path"]).parent
    skeleton = np.asarray(Image.open(output_dir / f"{used['map']}.png").convert("RGB"))
    lit = skeleton.any(axis=2)
    assert skeleton.shape == (64, 64, 3) and 0 < lit.sum() < lit.size // 2  # coloured skeleton on black
    shaded = {tuple(int(c * 0.6) for c in color) for color in OPENPOSE_COLORS}
    assert {tuple(c) for c in skeleton[lit]} <= set(OPENPOSE_COLORS) | shaded


async def test_a_missing_pose_model_is_a_one_line_error_naming_control_and_what_to_download(
    tmp_path: Path, tiny_models: dict[str, Path], controlnet_dir: Path
) -> None:
    from mcp import Client

    from imgtools_mcp.server import build_server

    missing = str(tmp_path / "no-vitpose")
    settings = Settings(
        model=str(tiny_models["sd15"]), output_dir=tmp_path / "out", device="cpu", hf_offline=True,
        controlnet_dirs=[controlnet_dir], pose_model=missing,
    )
    async with Client(build_server(settings)) as client:
        result = await client.call_tool(
            "generate", {"prompt": "x", "width": 64, "height": 64, "steps": 2, "control": [{"type": "pose", "image": drawing_url()}]}
        )
    assert result.is_error
    text = result.content[0].text
    assert "\n" not in text and "control[0].type: the pose model" in text, text
    assert f"`hf download {missing}`" in text and "type 'image'" in text, text


async def test_control_is_sweepable(client) -> None:
    canny = {"type": "canny", "image": drawing_url()}
    result = await client.call_tool(
        "sweep",
        {
            "tool": "generate",
            "base": {"prompt": "a ball", "width": 64, "height": 64, "steps": 2, "seed": 11, "control": [canny]},
            "x": {"param": "control:0", "values": [0.0, 1.0]},
        },
    )
    assert not result.is_error, result.content
    cells = result.structured_content["cells"]
    assert len(cells) == 2 and all(cell.get("image") for cell in cells), cells
    off, on = (np.asarray(Image.open(cell["image"]["path"]).convert("RGB"), dtype=np.float64) for cell in cells)
    assert np.abs(off - on).mean() > 2  # the weight really changed between the cells
    wrong = await client.call_tool("sweep", {"tool": "generate", "base": {"prompt": "x", "control": [canny]},
                                             "x": {"param": "control:2", "values": [0.5]}})
    assert wrong.is_error and "control:2" in wrong.content[0].text


async def test_flux_controlnet_changes_the_image_and_weight_zero_does_not(tmp_path: Path) -> None:
    from imgtools_mcp.testing import make_test_model
    from imgtools_mcp.testing.tiny_controlnet import make_test_flux_controlnet

    flux = make_test_model(tmp_path / "tiny-flux", "flux")
    make_test_flux_controlnet(flux, tmp_path / "controlnets" / "FLUX.1-dev-Controlnet-Canny")
    engine = Engine(Settings(model=str(flux), output_dir=tmp_path / "out", device="cpu", hf_offline=True,
                             controlnet_dirs=[tmp_path / "controlnets"]))
    plain = await run(engine, None)
    controlled = await run(engine, [ControlInput("canny", canny_map())])
    silent = await run(engine, [ControlInput("canny", canny_map(), weight=0.0)])
    assert np.abs(controlled - plain).mean() > 2
    assert np.abs(silent - plain).max() <= 1
    with pytest.raises(InvalidRequestError, match=r"control\[0\]\.type: no ControlNet for 'scribble' on flux models"):
        engine.check(EngineRequest(mode="txt2img", model=None, prompt="x", steps=2, extra={"control": [ControlInput("scribble", canny_map())]}))


@pytest.mark.skipif(__import__("importlib").util.find_spec("openvino") is None, reason="OpenVINO is not installed")
async def test_on_openvino_a_controlled_unet_runs_on_torch_with_the_step_cache(
    tmp_path: Path, tiny_models: dict[str, Path], controlnet_dir: Path
) -> None:
    from mcp import Client

    from imgtools_mcp.server import build_server

    settings = Settings(model=str(tiny_models["sd15"]), output_dir=tmp_path / "out", device="cpu", hf_offline=True,
                        controlnet_dirs=[controlnet_dir], backend="openvino", cache_dir=tmp_path / "cache", quantize="none")  # fmt: skip
    request = {"prompt": "a ball", "width": 64, "height": 64, "steps": 8, "seed": 11, "speed": "balanced",
               "control": [{"type": "canny", "image": drawing_url()}]}  # fmt: skip
    async with Client(build_server(settings)) as client:
        result = await client.call_tool("generate", request)
        plain = await client.call_tool("generate", {key: value for key, value in request.items() if key != "control"})
    assert not result.is_error, result.content[0].text
    engine = result.structured_content["engine"]
    # The ControlNet's residuals go into the UNet's blocks: its UNet is torch's for the whole request, said up front.
    assert engine["backend_components"] == {"unet": "torch", "vae_decoder": "openvino"}
    assert "ControlNet residuals" in engine["backend_reason"]
    assert (engine["step_cache"]["method"], engine["step_cache"]["computed"], engine["step_cache"]["reused"]) == ("deep_cache", 4, 4)
    # Without control the same server's UNet is OpenVINO's again, with its own shallow IR for the cache.
    assert plain.structured_content["engine"]["backend_components"]["unet"] == "openvino"
    assert plain.structured_content["engine"]["step_cache"]["computed"] == 4
