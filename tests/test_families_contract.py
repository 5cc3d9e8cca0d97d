"""One contract over every model family, through the MCP client on tiny random-weight pipelines saved by diffusers.

Each family's entry says which modes it has; every family then: generates, gives the same pixels for the same
seed, edits (img2img or instruction), inpaints with every pixel outside the mask unchanged, sweeps one of its
parameters, turns a LoRA on and off where it takes LoRAs, records infotext and sidecars, reports progress per
step and stops when cancelled. A family (C2's included) joins by adding a FamilyCase.
"""

from __future__ import annotations

import base64
import io
import json
from dataclasses import dataclass
from pathlib import Path

import anyio
import numpy as np
import pytest
from mcp import Client
from PIL import Image

from imgtools_mcp.config import Settings
from imgtools_mcp.engine import families
from imgtools_mcp.infotext import parse_infotext
from imgtools_mcp.server import build_server
from imgtools_mcp.testing import make_test_model

pytestmark = pytest.mark.anyio


@dataclass(frozen=True)
class FamilyCase:
    builder: str  # make_test_model's family id
    family: str  # the registry id it must be recognised as
    generate: bool = True
    edit: str | None = "img2img"  # img2img | instruct | None (no edit pipeline: refused by name)
    inpaint: bool = True
    lora: str | None = None  # the tiny LoRA builder's layout, None: no LoRA test
    variant: str | None = None
    size: int = 64  # the family's smallest convenient multiple
    guidance_field: str = "CFG scale"


CASES = [
    FamilyCase("flux", "flux", lora="flux", guidance_field="Distilled CFG Scale"),
    FamilyCase("flux-schnell", "flux", variant="schnell", inpaint=False, guidance_field="Distilled CFG Scale"),
    FamilyCase("flux-kontext", "flux-kontext", edit="instruct", lora="flux", guidance_field="Distilled CFG Scale"),
    FamilyCase("flux-fill", "flux-fill", generate=False, edit=None, guidance_field="Distilled CFG Scale"),
    FamilyCase("sd3", "sd3"),
    FamilyCase("chroma", "chroma", lora="flux"),
    FamilyCase("qwen-image", "qwen-image", guidance_field="True CFG scale"),
    # Edit-only: no text-to-image and no inpaint pipeline; edits are instructions with 1-3 images.
    FamilyCase("qwen-image-edit", "qwen-image-edit", generate=False, edit="instruct", inpaint=False, guidance_field="True CFG scale"),
    FamilyCase("z-image-turbo", "z-image", variant="turbo"),
    FamilyCase("flux2", "flux2", edit="instruct", inpaint=False, guidance_field="Distilled CFG Scale"),
    FamilyCase("flux2-klein", "flux2-klein", edit="instruct", variant="distilled"),
]
IDS = [case.builder for case in CASES]
FAST = {"steps": 2, "seed": 11}


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("family-models")
    return {case.builder: make_test_model(root / case.builder, case.builder) for case in CASES}


@pytest.fixture(scope="module")
def loras(tmp_path_factory: pytest.TempPathFactory, models: dict[str, Path]) -> Path:
    from imgtools_mcp.testing.tiny_flux import make_tiny_flux_lora

    folder = tmp_path_factory.mktemp("family-loras")
    make_tiny_flux_lora(models["flux"], folder / "flux_style.safetensors")
    return folder


def settings_for(model: Path, tmp_path: Path, loras: Path | None = None) -> Settings:
    return Settings(
        model=str(model), output_dir=tmp_path / "out", device="cpu", hf_offline=True, lora_dirs=[loras] if loras else []
    )


def pattern(size: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    x = np.linspace(0, 255, size)[None, :].repeat(size, 0)
    pixels = np.stack([x, x.T, 255 - (x + x.T) / 2], axis=-1) * 0.75 + rng.integers(0, 60, (size, size))[..., None]
    return Image.fromarray(pixels.clip(0, 255).astype(np.uint8))


def data_url(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def first(result) -> dict:
    assert not result.is_error, result.content[0].text
    return result.structured_content["images"][0]


def pixels_of(image: dict) -> np.ndarray:
    return np.asarray(Image.open(image["path"]).convert("RGB"), dtype=np.int16)


def sidecar(image: dict) -> dict:
    return json.loads(Path(image["path"].removesuffix(".png") + ".json").read_text())


def one_line_error(result, *needles: str) -> str:
    assert result.is_error, result.content
    text = result.content[0].text
    assert "\n" not in text and "Traceback" not in text, text
    for needle in needles:
        assert needle in text, text
    return text


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_saved_folder_is_recognised_from_its_files(case: FamilyCase, models: dict[str, Path]) -> None:
    info = families.detect_folder(models[case.builder])
    assert info.family.id == case.family
    assert (info.variant.id if info.variant else None) == case.variant
    assert json.loads((models[case.builder] / "model_index.json").read_text())["_class_name"]


@pytest.mark.parametrize("case", CASES, ids=IDS)
async def test_generate_is_deterministic_with_infotext_and_progress(case: FamilyCase, models: dict[str, Path], tmp_path: Path) -> None:
    size = case.size
    args = {"prompt": "a red barn", "width": size, "height": size, **FAST}
    async with Client(build_server(settings_for(models[case.builder], tmp_path))) as client:
        if not case.generate:
            one_line_error(await client.call_tool("generate", args), "model", "not available", families.get(case.family).label)
            return
        steps: list[float] = []

        async def progress(done: float, total: float | None, message: str | None) -> None:
            if (message or "").startswith("step "):  # loading is reported first, below step 1
                steps.append(done)

        first_run = await client.call_tool("generate", args, progress_callback=progress)
        again = await client.call_tool("generate", args)
        other = await client.call_tool("generate", {**args, "seed": 12})
        off_grid = await client.call_tool("generate", {**args, "width": size + 8})
        bad_sampler = await client.call_tool("generate", {**args, "sampler": "euler_a"})
    image = first(first_run)
    assert steps == [1, 2]
    assert np.array_equal(pixels_of(image), pixels_of(first(again)))
    assert not np.array_equal(pixels_of(image), pixels_of(first(other)))
    assert Image.open(image["path"]).size == (size, size)
    _, _, fields = parse_infotext(Image.open(image["path"]).text["parameters"])
    assert fields["Family"] == case.family and fields["Seed"] == "11" and fields["Steps"] == "2"
    assert float(fields[case.guidance_field]) == first_run.structured_content["parameters"]["guidance_scale"]
    model = sidecar(image)["model"]
    assert model["family"] == case.family and model["guidance_knob"] == families.get(case.family).guidance_knob
    assert model["variant"] == case.variant
    multiple = families.get(case.family).size_multiple
    if multiple > 8:
        one_line_error(off_grid, "width/height", f"multiples of {multiple}")
    one_line_error(bad_sampler, "sampler", "euler_a", "default")


@pytest.mark.parametrize("case", CASES, ids=IDS)
async def test_edit_runs_as_the_family_edits(case: FamilyCase, models: dict[str, Path], tmp_path: Path) -> None:
    source = pattern(case.size)
    # Flow img2img starts at the first timestep below strength: 0.5 of 2 steps starts halfway, keeping the input.
    args = {"prompt": "make it purple", "image": data_url(source), **FAST}
    if case.edit == "img2img":
        args["strength"] = 0.5
    async with Client(build_server(settings_for(models[case.builder], tmp_path))) as client:
        result = await client.call_tool("edit", args)
        if case.edit is None:
            one_line_error(result, "not available", families.get(case.family).label)
            return
        again = await client.call_tool("edit", args)
        other_image = await client.call_tool("edit", {**args, "image": data_url(pattern(case.size, seed=5))})
    image = first(result)
    assert np.array_equal(pixels_of(image), pixels_of(first(again)))
    # The input matters: another picture under the same seed gives another result.
    assert not np.array_equal(pixels_of(image), pixels_of(first(other_image)))
    fields = parse_infotext(Image.open(image["path"]).text["parameters"])[2]
    if case.edit == "instruct":
        assert fields["Edit"] == "instruction" and "Denoising strength" not in fields
        assert "strength" not in result.structured_content["parameters"]
    else:
        assert float(fields["Denoising strength"]) == 0.5


@pytest.mark.parametrize("case", [c for c in CASES if c.inpaint], ids=[c.builder for c in CASES if c.inpaint])
async def test_inpaint_keeps_every_pixel_outside_the_mask(case: FamilyCase, models: dict[str, Path], tmp_path: Path) -> None:
    # 72x56 is off the 16-pixel grid: the denoiser works at a rounded size, the output keeps the input's.
    source = pattern(80).crop((0, 0, 72, 56))
    box = (24, 16, 48, 40)
    async with Client(build_server(settings_for(models[case.builder], tmp_path))) as client:
        result = await client.call_tool("inpaint", {
            "prompt": "a window", "image": data_url(source), "inpaint_area": "full", "mask_blur": 0,
            "mask_shapes": [{"type": "rect", "x": box[0], "y": box[1], "width": box[2] - box[0], "height": box[3] - box[1]}],
            **FAST,
        })
    image = first(result)
    assert (image["width"], image["height"]) == (72, 56)
    parameters = result.structured_content["parameters"]
    multiple = families.get(case.family).size_multiple
    assert parameters["width"] % multiple == 0 and parameters["height"] % multiple == 0
    after, before = pixels_of(image), np.asarray(source, dtype=np.int16)
    outside = np.ones(before.shape[:2], bool)
    outside[box[1] - 1 : box[3] + 1, box[0] - 1 : box[2] + 1] = False
    assert np.abs(after - before)[outside].max() == 0  # PNG is lossless: "unchanged" means exactly
    assert np.abs(after - before)[box[1] : box[3], box[0] : box[2]].mean() > 3  # and the hole was repainted


@pytest.mark.parametrize("case", CASES, ids=IDS)
async def test_sweep_over_the_guidance_knob(case: FamilyCase, models: dict[str, Path], tmp_path: Path) -> None:
    tool = "generate" if case.generate else ("inpaint" if case.inpaint else "edit")
    base: dict = {"prompt": "a lighthouse", "width": case.size, "height": case.size, **FAST}
    if tool == "inpaint":
        base.update(image=data_url(pattern(case.size)), mask_shapes=[{"type": "rect", "x": 16, "y": 16, "width": 32, "height": 32}])
    elif tool == "edit":  # an edit-only family (Qwen-Image-Edit) sweeps its instruction edits
        base.update(image=data_url(pattern(case.size)))
    async with Client(build_server(settings_for(models[case.builder], tmp_path))) as client:
        result = await client.call_tool(
            "sweep", {"tool": tool, "base": base, "x": {"param": "guidance_scale", "values": [1.0, 6.0]}}
        )
    assert not result.is_error, result.content[0].text
    cells = result.structured_content["cells"]
    assert [c["values"]["guidance_scale"] for c in cells] == [1.0, 6.0]
    assert all(c["status"] == "done" and c["image"] for c in cells), cells
    assert [c["parameters"]["guidance_scale"] for c in cells] == [1.0, 6.0]


@pytest.mark.parametrize("case", [c for c in CASES if c.lora], ids=[c.builder for c in CASES if c.lora])
async def test_lora_changes_the_image_and_off_restores_it(case: FamilyCase, models: dict[str, Path], loras: Path, tmp_path: Path) -> None:
    tool, extra = ("generate", {}) if case.generate else ("inpaint", {})
    args = {"prompt": "a cat", "width": case.size, "height": case.size, **FAST, **extra}
    async with Client(build_server(settings_for(models[case.builder], tmp_path, loras))) as client:
        plain = await client.call_tool(tool, args)
        styled = await client.call_tool(tool, {**args, "loras": [{"name": f"{case.lora}_style", "weight": 1.0}]})
        plain_again = await client.call_tool(tool, args)
    assert not np.array_equal(pixels_of(first(plain)), pixels_of(first(styled)))
    assert np.array_equal(pixels_of(first(plain)), pixels_of(first(plain_again)))


async def test_a_lora_of_another_family_is_refused_by_name(models: dict[str, Path], loras: Path, tiny_sd15: Path, tmp_path: Path) -> None:
    async with Client(build_server(settings_for(tiny_sd15, tmp_path, loras))) as client:
        result = await client.call_tool(
            "generate", {"prompt": "x", "width": 64, "height": 64, **FAST, "loras": [{"name": "flux_style"}]}
        )
        on_sd3 = await client.call_tool(
            "generate", {"prompt": "x", "model": str(models["sd3"]), "width": 64, "height": 64, **FAST, "loras": [{"name": "flux_style"}]}
        )
    one_line_error(result, "loras", "flux_style", "FLUX.1", "SD 1.x")
    one_line_error(on_sd3, "loras", "FLUX.1", "SD 3/3.5")


async def test_instruction_edit_model_refusals_name_the_families_that_can(models: dict[str, Path], tmp_path: Path) -> None:
    source = data_url(pattern(64))
    async with Client(build_server(settings_for(models["flux-kontext"], tmp_path))) as client:
        too_many = await client.call_tool(
            "edit", {"prompt": "x", "image": source, **FAST, "reference_images": [{"image": source}]}
        )
        with_strength = await client.call_tool("edit", {"prompt": "x", "image": source, "strength": 0.3, **FAST})
    one_line_error(too_many, "reference_images", "FLUX.1 Kontext")
    assert not with_strength.is_error
    assert any("strength does not apply" in w for w in with_strength.structured_content.get("warnings", []))


async def test_edit_model_setting_routes_edit_to_an_instruction_model(models: dict[str, Path], tmp_path: Path) -> None:
    settings = settings_for(models["flux"], tmp_path).model_copy(update={"edit_model": str(models["flux-kontext"])})
    async with Client(build_server(settings)) as client:
        edited = await client.call_tool("edit", {"prompt": "make the sky purple", "image": data_url(pattern(64)), **FAST})
        generated = await client.call_tool("generate", {"prompt": "x", "width": 64, "height": 64, **FAST})
    assert sidecar(first(edited))["model"]["family"] == "flux-kontext"
    assert sidecar(first(generated))["model"]["family"] == "flux"


@pytest.mark.parametrize("case", [c for c in CASES if c.generate], ids=[c.builder for c in CASES if c.generate])
async def test_cancelled_call_stops_and_frees_the_engine(case: FamilyCase, models: dict[str, Path], tmp_path: Path) -> None:
    first_step = anyio.Event()
    steps: list[float] = []

    async def progress(done: float, total: float | None, message: str | None) -> None:
        if (message or "").startswith("step "):  # denoising, not the load reported before it
            steps.append(done)
            first_step.set()

    async with Client(build_server(settings_for(models[case.builder], tmp_path))) as client:
        async with anyio.create_task_group() as tg:

            async def long_call() -> None:
                outcome = await client.call_tool(
                    "generate", {"prompt": "x", "width": 128, "height": 128, "steps": 150}, progress_callback=progress
                )
                pytest.fail(f"the call was not cancelled: {outcome.content[0].text[:200]}")

            tg.start_soon(long_call)
            with anyio.fail_after(120):
                await first_step.wait()
            tg.cancel_scope.cancel()
        with anyio.fail_after(120):
            result = await client.call_tool("generate", {"prompt": "y", "width": case.size, "height": case.size, **FAST})
    assert not result.is_error
    assert len(steps) < 150


async def test_a_gguf_transformer_runs_in_its_family_pipeline(models: dict[str, Path], tmp_path: Path) -> None:
    pytest.importorskip("gguf")
    from imgtools_mcp.testing.tiny_flux import make_tiny_gguf_transformer

    library = tmp_path / "models"
    library.mkdir()
    (library / "tiny-flux").symlink_to(models["flux"], target_is_directory=True)  # where the rest of the pipeline is
    gguf_file = make_tiny_gguf_transformer(models["flux"], library / "flux-tiny-Q8_0.gguf")
    settings = settings_for(models["flux"], tmp_path).model_copy(update={"model_dirs": [library]})
    args = {"prompt": "a red barn", "width": 64, "height": 64, **FAST}
    async with Client(build_server(settings)) as client:
        full = await client.call_tool("generate", args)
        quantized = await client.call_tool("generate", {**args, "model": str(gguf_file)})
    image = first(quantized)
    model = sidecar(image)["model"]
    assert (model["family"], model["kind"], model["name"]) == ("flux", "file", "flux-tiny-Q8_0")
    difference = np.abs(pixels_of(image) - pixels_of(first(full)))
    assert difference.mean() < 3  # Q8_0 rounding changes a few levels, not the picture
    info = quantized.structured_content["engine"]["quantization"]
    assert info["method"] == "gguf" and info["components"] == ["transformer"], info
    assert "loaded as stored, IMGTOOLS_QUANTIZE does not quantize it again" in info["reason"], info


async def _generate_with_families(client: Client, models: dict[str, Path], cases: list[FamilyCase]) -> None:
    for case in cases:
        args = {"prompt": "over the wire", "model": str(models[case.builder]), "width": case.size, "height": case.size, **FAST}
        tool = "generate" if case.generate else ("inpaint" if case.inpaint else "edit")
        if tool == "inpaint":
            args = {**args, "image": data_url(pattern(case.size)), "mask_shapes": [{"type": "rect", "x": 8, "y": 8, "width": 16, "height": 16}]}
        elif tool == "edit":
            args = {**args, "image": data_url(pattern(case.size))}
        result = await client.call_tool(tool, args)
        assert sidecar(first(result))["model"]["family"] == case.family, case.builder


@pytest.mark.slow
async def test_every_family_generates_over_stdio_and_http(models: dict[str, Path], tmp_path: Path) -> None:
    """Every family's result crosses a real wire: alternate families over stdio and over HTTP (the transports are
    the same for all families, and each carries several kinds: generate, edit, inpaint)."""
    import sys

    from mcp import StdioServerParameters
    from server_process import HttpServer, connect, server_env

    params = StdioServerParameters(
        command=sys.executable, args=["-m", "imgtools_mcp.cli", "serve"], env=server_env(models["flux"], tmp_path / "stdio")
    )
    with anyio.fail_after(280):
        async with Client(params) as client:
            await _generate_with_families(client, models, CASES[0::2])
    (tmp_path / "logs").mkdir()
    server = await HttpServer(models["flux"], tmp_path / "http", tmp_path / "logs").start()
    try:
        with anyio.fail_after(280):
            async with connect(server.url) as client:
                await _generate_with_families(client, models, CASES[1::2])
    finally:
        server.stop()
