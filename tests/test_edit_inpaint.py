"""`edit` and `inpaint` (outpainting included) through the in-process MCP client with tiny real pipelines."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import torch
from mcp import Client
from PIL import Image, ImageFilter

from imgtools_mcp.config import Settings
from imgtools_mcp.engine.engine import Engine
from imgtools_mcp.infotext import parse_infotext
from imgtools_mcp.server import build_server

pytestmark = pytest.mark.anyio

FAST = {"steps": 2, "seed": 11}


# --- helpers --------------------------------------------------------------------------------


def pattern(size: tuple[int, int], seed: int = 0) -> Image.Image:
    """A colourful, textured test picture: any change to it shows up in the pixels."""
    width, height = size
    rng = np.random.default_rng(seed)
    x = np.linspace(0, 255, width)[None, :].repeat(height, 0)
    y = np.linspace(0, 255, height)[:, None].repeat(width, 1)
    noise = rng.integers(0, 60, (height, width))
    pixels = np.stack([x, y, 255 - (x + y) / 2], axis=-1) * 0.75 + noise[..., None]
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def data_url(image: Image.Image) -> str:
    return "data:image/png;base64," + base64.b64encode(png_bytes(image)).decode()


def first(result) -> dict:
    assert not result.is_error, result.content[0].text
    return result.structured_content["images"][0]


def pixels_of(info: dict) -> np.ndarray:
    return np.asarray(Image.open(info["path"]).convert("RGB"), dtype=np.int16)


def sidecar(info: dict) -> dict:
    return json.loads(Path(info["path"]).with_suffix(".json").read_text())


def infotext(info: dict) -> dict[str, str]:
    return parse_infotext(Image.open(info["path"]).text["parameters"])[2]


def outside(mask: np.ndarray, margin: int) -> np.ndarray:
    """True where a pixel is more than `margin` pixels from any masked pixel (so beyond the blur band too)."""
    grown = Image.fromarray((mask > 0).astype(np.uint8) * 255).filter(ImageFilter.MaxFilter(2 * margin + 1))
    return np.asarray(grown) == 0


def rect_mask(size: tuple[int, int], box: tuple[int, int, int, int]) -> np.ndarray:
    mask = np.zeros((size[1], size[0]), dtype=np.uint8)
    mask[box[1] : box[3], box[0] : box[2]] = 255
    return mask


def assert_one_line_error(result, *needles: str) -> None:
    assert result.is_error
    text = result.content[0].text
    assert "\n" not in text and "Traceback" not in text, text
    for needle in needles:
        assert needle in text, text


@pytest.fixture
def sd15_settings(tmp_path: Path, tiny_sd15: Path) -> Settings:
    return Settings(model=str(tiny_sd15), output_dir=tmp_path / "out", device="cpu", hf_offline=True)


# --- schemas --------------------------------------------------------------------------------


async def test_tools_are_listed_with_described_parameters(client: Client) -> None:
    tools = {tool.name: tool for tool in (await client.list_tools()).tools}
    edit, inpaint = tools["edit"], tools["inpaint"]
    assert sorted(edit.input_schema["required"]) == ["image", "prompt"]
    assert sorted(inpaint.input_schema["required"]) == ["image", "prompt"]
    for tool, names in ((edit, ("image", "strength", "width")), (inpaint, ("image", "mask", "mask_shapes", "expand",
                        "mask_blur", "invert_mask", "inpaint_area", "padding", "strength"))):
        for name in names:
            assert tool.input_schema["properties"][name].get("description"), (tool.name, name)
    props = inpaint.input_schema["properties"]
    assert props["strength"]["default"] == 0.99 and edit.input_schema["properties"]["strength"]["default"] == 0.6
    assert "masked" in json.dumps(props["inpaint_area"]) and "ellipse" in json.dumps(inpaint.input_schema)
    # The descriptions tell a model which tool to pick and how to chain results.
    assert "inpaint" in edit.description and "edit" in inpaint.description
    assert "imgtools://images/<id>" in edit.description and "imgtools://images/<id>" in inpaint.description
    assert edit.output_schema is not None and inpaint.output_schema is not None


# --- the chain, both families -----------------------------------------------------------------


async def test_generate_edit_inpaint_chain_records_parents(family_settings: Settings) -> None:
    async with Client(build_server(family_settings)) as client:
        made = first(await client.call_tool("generate", {"prompt": "a house", "width": 64, "height": 64, **FAST}))
        edited = first(await client.call_tool("edit", {"prompt": "a house at night", "image": made["id"], "strength": 0.5, **FAST}))
        inpainted_result = await client.call_tool(
            "inpaint",
            {"prompt": "a moon", "image": edited["uri"], "mask_shapes": [{"type": "ellipse", "x": 0.5, "y": 0, "width": 0.5, "height": 0.5}], **FAST},
        )
        inpainted = first(inpainted_result)
        metadata = json.loads((await client.read_resource(inpainted["metadata_uri"])).contents[0].text)

    assert (edited["width"], edited["height"]) == (inpainted["width"], inpainted["height"]) == (64, 64)
    assert sidecar(made).get("parent") is None
    assert sidecar(edited)["parent"] == made["id"] and sidecar(edited)["tool"] == "edit"
    assert metadata["parent"] == edited["id"] and metadata["tool"] == "inpaint"
    assert metadata["input"]["reference"] == edited["uri"]

    edit_fields = infotext(edited)
    assert float(edit_fields["Denoising strength"]) == 0.5
    assert edit_fields["Init image"] == made["id"]
    assert edit_fields["Init image hash"] == hashlib.sha256(Path(made["path"]).read_bytes()).hexdigest()[:10]

    inpaint_fields = infotext(inpainted)
    assert float(inpaint_fields["Denoising strength"]) == 0.99
    assert inpaint_fields["Init image hash"] == hashlib.sha256(Path(edited["path"]).read_bytes()).hexdigest()[:10]
    assert inpaint_fields["Mask"] == "ellipse 0.5,0 0.5x0.5; blur 4" and inpaint_fields["Mask blur"] == "4"
    parameters = inpainted_result.structured_content["parameters"]
    assert parameters["image"] == edited["uri"] and parameters["strength"] == 0.99
    assert parameters["mask_shapes"][0]["type"] == "ellipse" and parameters["inpaint_area"] == "full"


# --- preservation outside the mask -------------------------------------------------------------


@pytest.mark.parametrize("area", ["full", "masked"])
async def test_pixels_outside_the_mask_come_back_unchanged(family_settings: Settings, area: str) -> None:
    # 100x60 is not a multiple of 8: the denoiser works at a rounded size, yet the output keeps the input's.
    source = pattern((100, 60))
    box = (30, 20, 54, 40)
    blur = 3
    async with Client(build_server(family_settings)) as client:
        result = await client.call_tool("inpaint", {
            "prompt": "a window", "image": data_url(source), "inpaint_area": area, "padding": 8, "mask_blur": blur,
            "mask_shapes": [{"type": "rect", "x": box[0], "y": box[1], "width": box[2] - box[0], "height": box[3] - box[1]}],
            **FAST,
        })
    image = first(result)
    assert (image["width"], image["height"]) == (100, 60)
    after = pixels_of(image)
    before = np.asarray(source, dtype=np.int16)
    mask = rect_mask((100, 60), box)
    keep = outside(mask, margin=3 * blur + 1)
    diff = np.abs(after - before)
    assert keep.sum() > 0.6 * keep.size
    assert diff[keep].max() == 0  # the PNG round trip is lossless, so "unchanged" means exactly
    assert diff[mask > 0].mean() > 5  # and the masked area really was repainted
    # A data URL is recorded shortened, not as kilobytes of base64.
    recorded = infotext(image)["Init image"]
    assert recorded.startswith("data:image/png;base64,") and recorded.endswith("chars)") and len(recorded) <= 80
    assert sidecar(image)["input"]["sha256"] == hashlib.sha256(png_bytes(source)).hexdigest()
    parameters = result.structured_content["parameters"]
    if area == "masked":
        # The 24x20 box plus padding is worked on at the model's native area (64x64 for the tiny models).
        assert (parameters["width"], parameters["height"]) == (64, 64)
        assert infotext(image)["Inpaint area"] == "Only masked" and infotext(image)["Masked area padding"] == "8"
        assert sidecar(image)["mask"]["crop_box"][2] - sidecar(image)["mask"]["crop_box"][0] < 100
    else:
        assert (parameters["width"], parameters["height"]) == (104, 64)


# --- the three ways to give a mask -----------------------------------------------------------------


async def test_mask_image_from_a_file_is_resized_and_said_so(sd15_settings: Settings) -> None:
    source = pattern((64, 64), seed=1)
    async with Client(build_server(sd15_settings)) as client:
        # Files are read from the allowed roots: by default the output folder, which exists once the server runs.
        folder = sd15_settings.output_dir
        source.save(folder / "photo.png")
        small_mask = Image.new("L", (32, 32), 0)
        small_mask.paste(255, (0, 0, 16, 16))  # top-left quarter once scaled to 64x64
        small_mask.save(folder / "mask.png")
        result = await client.call_tool("inpaint", {"prompt": "a sun", "image": "photo.png", "mask": str(folder / "mask.png"),
                                                    "mask_blur": 0, **FAST})
    image = first(result)
    assert any("mask resized from 32x32" in w for w in result.structured_content["warnings"])
    assert "resized from 32x32" in infotext(image)["Mask"]
    diff = np.abs(pixels_of(image) - np.asarray(source, dtype=np.int16))
    mask = rect_mask((64, 64), (0, 0, 32, 32))
    assert diff[outside(mask, margin=1)].max() == 0
    assert diff[mask > 0].mean() > 5
    assert sidecar(image)["mask"]["source"] == "mask" and sidecar(image)["parent"] is None


async def test_mask_shapes_in_fractions_and_inverted(sd15_settings: Settings) -> None:
    source = pattern((64, 64), seed=2)
    async with Client(build_server(sd15_settings)) as client:
        result = await client.call_tool("inpaint", {
            "prompt": "sky", "image": data_url(source), "invert_mask": True, "mask_blur": 0,
            "mask_shapes": [{"type": "rect", "x": 0.25, "y": 0.25, "width": 0.5, "height": 0.5}], **FAST,
        })
    image = first(result)
    diff = np.abs(pixels_of(image) - np.asarray(source, dtype=np.int16))
    # Inverted: the middle half is kept, the frame around it repainted.
    assert diff[16:48, 16:48].max() == 0
    assert diff[:8].mean() > 5
    assert infotext(image)["Mask mode"] == "Inpaint not masked"


async def test_outpaint_grows_the_canvas(family_settings: Settings) -> None:
    source = pattern((64, 48), seed=3)
    expand = {"left": 16, "right": 0, "top": 8, "bottom": 24}
    async with Client(build_server(family_settings)) as client:
        result = await client.call_tool("inpaint", {"prompt": "a wide landscape", "image": data_url(source), "expand": expand, **FAST})
    image = first(result)
    assert (image["width"], image["height"]) == (64 + 16, 48 + 8 + 24)
    after = pixels_of(image)
    before = np.asarray(source, dtype=np.int16)
    # The original sits at (left, top); away from the repainted seam (overlap + blur band) it is untouched.
    inner = after[8 + 20 : 8 + 48 - 20, 16 + 20 : 16 + 64]
    assert np.array_equal(inner, before[20:-20, 20:])
    # The new border was painted, not left as the original's edge pixels stretched outwards.
    assert np.abs(after[8 : 8 + 48, :16] - before[:, :1]).mean() > 5
    assert infotext(image)["Mask"].startswith("expand left 16 top 8 bottom 24")
    assert result.structured_content["parameters"]["expand"] == expand


# --- edit ---------------------------------------------------------------------------------------


def vae_reconstruction(model_folder: str, image: Image.Image) -> np.ndarray:
    """What the model's VAE makes of the image by itself: the most any img2img output can resemble it."""
    from diffusers import AutoencoderKL

    vae = AutoencoderKL.from_pretrained(Path(model_folder) / "vae")
    tensor = torch.from_numpy(np.asarray(image, dtype=np.float32) / 127.5 - 1).permute(2, 0, 1)[None]
    with torch.no_grad():
        decoded = vae.decode(vae.encode(tensor).latent_dist.mean).sample
    return ((decoded.clamp(-1, 1) + 1) * 127.5)[0].permute(1, 2, 0).round().numpy()


async def test_strength_near_zero_stays_close_and_one_goes_far(family_settings: Settings) -> None:
    source = pattern((64, 64), seed=4)
    reference = vae_reconstruction(family_settings.model, source)
    async with Client(build_server(family_settings)) as client:
        low = first(await client.call_tool("edit", {"prompt": "a cat", "image": data_url(source), "strength": 0.05, "steps": 20, "seed": 1}))
        high = first(await client.call_tool("edit", {"prompt": "a cat", "image": data_url(source), "strength": 1.0, "steps": 2, "seed": 1}))
    low_distance = np.abs(pixels_of(low) - reference).mean()
    high_distance = np.abs(pixels_of(high) - reference).mean()
    # Measured with the tiny models: about 1 at strength 0.05, about 30 at strength 1.
    assert low_distance < 4, low_distance
    assert high_distance > 15 and high_distance > 5 * low_distance, (low_distance, high_distance)


async def test_edit_size_defaults_to_the_input_rounded_and_capped(tmp_path: Path, tiny_sd15: Path) -> None:
    settings = Settings(model=str(tiny_sd15), output_dir=tmp_path / "out", device="cpu", hf_offline=True, max_pixels=96 * 96)
    async with Client(build_server(settings)) as client:
        rounded = await client.call_tool("edit", {"prompt": "x", "image": data_url(pattern((84, 60))), **FAST})
        one_side = await client.call_tool("edit", {"prompt": "x", "image": data_url(pattern((80, 120))), "width": 64, **FAST})
        capped = await client.call_tool("edit", {"prompt": "x", "image": data_url(pattern((192, 96))), **FAST})
        explicit = await client.call_tool("edit", {"prompt": "x", "image": data_url(pattern((64, 64))), "width": 128, "height": 128, **FAST})
    assert (first(rounded)["width"], first(rounded)["height"]) == (88, 64)
    assert "rounded to multiples of 8" in " ".join(rounded.structured_content["warnings"])
    assert (first(one_side)["width"], first(one_side)["height"]) == (64, 96)
    image = first(capped)
    assert image["width"] * image["height"] <= 96 * 96 and image["width"] == 2 * image["height"]
    assert "IMGTOOLS_MAX_PIXELS" in " ".join(capped.structured_content["warnings"])
    assert_one_line_error(explicit, "width/height", "IMGTOOLS_MAX_PIXELS")


async def test_edit_reports_progress_per_step(client: Client) -> None:
    seen: list[tuple[float, float | None]] = []

    async def progress(done: float, total: float | None, message: str | None) -> None:
        seen.append((done, total))

    made = first(await client.call_tool("generate", {"prompt": "x", "width": 64, "height": 64, **FAST}))
    result = await client.call_tool("edit", {"prompt": "y", "image": made["uri"], "strength": 0.5, "steps": 8}, progress_callback=progress)
    assert not result.is_error
    assert seen == [(1, 4), (2, 4), (3, 4), (4, 4)]  # strength 0.5 of 8 steps


async def test_img2img_and_inpaint_reuse_the_loaded_weights(sd15_settings: Settings) -> None:
    engine = Engine(sd15_settings)
    async with Client(build_server(sd15_settings, engine=engine)) as client:
        made = first(await client.call_tool("generate", {"prompt": "x", "width": 64, "height": 64, **FAST}))
        bytes_after_generate = engine.cache.used_bytes()
        first(await client.call_tool("edit", {"prompt": "y", "image": made["id"], **FAST}))
        first(await client.call_tool("inpaint", {"prompt": "z", "image": made["id"], "expand": {"right": 16}, **FAST}))
    [model] = engine.cache.loaded()
    base = model.base
    modules = {name: c for name, c in base.components.items() if isinstance(c, torch.nn.Module)}
    assert {"unet", "vae", "text_encoder"} <= set(modules)
    base_tensors = {p.data_ptr() for module in modules.values() for p in module.parameters()}
    for mode in ("img2img", "inpaint"):
        variant = model.variants[mode]
        for name, module in modules.items():
            assert variant.components[name] is module, (mode, name)
        variant_tensors = {p.data_ptr() for c in variant.components.values() if isinstance(c, torch.nn.Module) for p in c.parameters()}
        assert variant_tensors == base_tensors
    assert engine.cache.used_bytes() == bytes_after_generate
    await engine.aclose()


# --- dedicated inpainting checkpoints --------------------------------------------------------------


async def test_inpainting_checkpoint_inpaints_edits_and_refuses_generate(tmp_path: Path, tiny_sd15_inpaint: Path) -> None:
    settings = Settings(model=str(tiny_sd15_inpaint), output_dir=tmp_path / "out", device="cpu", hf_offline=True)
    source = pattern((64, 64), seed=5)
    async with Client(build_server(settings)) as client:
        inpainted = await client.call_tool("inpaint", {"prompt": "a door", "image": data_url(source), "mask_blur": 0,
                                                       "mask_shapes": [{"type": "rect", "x": 8, "y": 8, "width": 24, "height": 24}], **FAST})
        edited = await client.call_tool("edit", {"prompt": "a door", "image": data_url(source), **FAST})
        generated = await client.call_tool("generate", {"prompt": "a door", **FAST})
    image = first(inpainted)
    assert inpainted.structured_content["model"]["inpainting"] is True
    diff = np.abs(pixels_of(image) - np.asarray(source, dtype=np.int16))
    mask = rect_mask((64, 64), (8, 8, 32, 32))
    assert diff[outside(mask, margin=1)].max() == 0 and diff[mask > 0].mean() > 5
    assert (first(edited)["width"], first(edited)["height"]) == (64, 64)
    assert "inpaint of the whole image" in " ".join(edited.structured_content["warnings"])
    assert_one_line_error(generated, "model", "inpainting checkpoint")


# --- references and errors ----------------------------------------------------------------------


class _Images(BaseHTTPRequestHandler):
    small = png_bytes(Image.new("RGB", (8, 8), (200, 30, 30)))
    big = png_bytes(pattern((64, 64)))

    def log_message(self, format: str, *args: object) -> None:  # keep test output clean
        pass

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        body = {"/small.png": self.small, "/big.png": self.big}.get(self.path)
        if body is None:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Type", "image/png")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        try:
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client stopped reading at its size cap


@pytest.fixture
def image_server() -> Iterator[str]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Images)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(5)


async def test_url_inputs_are_fetched_within_the_size_cap(tmp_path: Path, tiny_sd15: Path, image_server: str) -> None:
    assert 1024 < len(_Images.big) and len(_Images.small) < 1024
    # The image server is on loopback, which URLs reach only when IMGTOOLS_ALLOW_PRIVATE_URLS names it.
    settings = Settings(model=str(tiny_sd15), output_dir=tmp_path / "out", device="cpu", hf_offline=True, max_input_bytes=1024,
                        allow_private_urls=["127.0.0.1"])
    async with Client(build_server(settings)) as client:
        small = await client.call_tool("edit", {"prompt": "x", "image": f"{image_server}/small.png", **FAST})
        big = await client.call_tool("edit", {"prompt": "x", "image": f"{image_server}/big.png", **FAST})
        as_mask = await client.call_tool("inpaint", {"prompt": "x", "image": f"{image_server}/small.png",
                                                     "mask": f"{image_server}/big.png", **FAST})
        still = await client.call_tool("edit", {"prompt": "x", "image": f"{image_server}/small.png", **FAST})
    image = first(small)
    assert (image["width"], image["height"]) == (64, 64)  # the 8x8 input, raised to the smallest size allowed
    assert sidecar(image)["input"]["source"] == "url"
    assert_one_line_error(big, "`image`", "big.png", "exceeds the 1024 bytes limit")
    assert_one_line_error(as_mask, "`mask`", "exceeds")
    assert not still.is_error


async def test_bad_references_are_one_line_errors_and_the_server_keeps_serving(sd15_settings: Settings, tmp_path: Path) -> None:
    outside_file = tmp_path / "elsewhere.png"
    pattern((64, 64)).save(outside_file)
    async with Client(build_server(sd15_settings)) as client:
        made = first(await client.call_tool("generate", {"prompt": "x", "width": 64, "height": 64, **FAST}))
        link = sd15_settings.output_dir / "innocent.png"
        link.symlink_to(outside_file)
        cases = [
            ({"image": str(outside_file)}, ("`image`", "outside the allowed input roots")),
            ({"image": "innocent.png"}, ("`image`", "outside the allowed input roots")),
            ({"image": "../elsewhere.png"}, ("`image`", "outside the allowed input roots")),
            ({"image": "20200101-000000-deadbeef"}, ("`image`", "unknown output id")),
            ({"image": "imgtools://images/20200101-000000-deadbeef"}, ("`image`", "unknown output id")),
            ({"image": "data:image/png;base64,iVBORw0KGgo!!!!not-base64"}, ("`image`", "corrupt base64")),
            ({"image": "data:image/png;base64," + base64.b64encode(b"not a png at all, just text" * 4).decode()},
             ("`image`", "not a decodable image")),
            ({"image": "ftp://example.com/a.png"}, ("`image`", "unsupported scheme")),
        ]
        for arguments, needles in cases:
            for tool in ("edit", "inpaint"):
                extra = {"mask_shapes": [{"type": "rect", "x": 0, "y": 0, "width": 8, "height": 8}]} if tool == "inpaint" else {}
                assert_one_line_error(await client.call_tool(tool, {"prompt": "x", **arguments, **extra, **FAST}), *needles)
        bad_mask = await client.call_tool("inpaint", {"prompt": "x", "image": made["id"], "mask": "20200101-000000-deadbeef", **FAST})
        assert_one_line_error(bad_mask, "`mask`", "unknown output id")
        # A bad reference fails the call itself, not a background job started for it.
        background = await client.call_tool("edit", {"prompt": "x", "image": "nope-not-a-thing.png", "background": True, **FAST})
        assert_one_line_error(background, "`image`")
        ok = await client.call_tool("edit", {"prompt": "x", "image": made["id"], **FAST})
        assert not ok.is_error


async def test_background_edit_runs_as_a_job(client: Client) -> None:
    made = first(await client.call_tool("generate", {"prompt": "x", "width": 64, "height": 64, **FAST}))
    ticket = await client.call_tool("edit", {"prompt": "y", "image": made["uri"], "background": True, **FAST})
    assert not ticket.is_error and ticket.structured_content["job_id"]
    status = await client.call_tool("get_job", {"job_id": ticket.structured_content["job_id"], "wait_s": 30})
    assert status.structured_content["state"] == "done", status.content[0].text
    result = status.structured_content["result"]
    [image] = result["images"]
    assert sidecar(image)["parent"] == made["id"]


@pytest.mark.parametrize(
    "arguments, needles",
    [
        ({}, ("exactly one of mask", "got none")),
        ({"mask": "x.png", "expand": {"left": 8}}, ("exactly one of mask", "mask and expand")),
        ({"mask_shapes": [{"type": "rect", "x": 0, "y": 0, "width": 8, "height": 8}], "expand": {"left": 8}}, ("mask_shapes and expand",)),
        ({"expand": {}}, ("expand", "at least one of left")),
        ({"expand": {"left": -8}}, ("expand.left",)),
        ({"expand": {"left": 8}, "invert_mask": True}, ("invert_mask", "expand")),
        ({"mask_shapes": []}, ("mask_shapes",)),
        ({"mask_shapes": [{"type": "star", "x": 0, "y": 0, "width": 8, "height": 8}]}, ("mask_shapes.0.type", "rect")),
        ({"mask_shapes": [{"type": "rect", "x": 70, "y": 0, "width": 8, "height": 8}]}, ("mask_shapes[0]", "outside the 64x64 image")),
        ({"mask_shapes": [{"type": "rect", "x": 0, "y": 0, "width": 1, "height": 1}], "invert_mask": True}, ("invert_mask", "nothing to repaint")),
        ({"expand": {"left": 8}, "inpaint_area": "middle"}, ("inpaint_area",)),
        ({"expand": {"left": 8}, "strength": 1.5}, ("strength",)),
        ({"expand": {"left": 8}, "strength": 0.1, "steps": 4}, ("strength", "no denoising step")),
        ({"expand": {"left": 8}, "mask_blur": -1}, ("mask_blur",)),
        ({"expand": {"left": 2048, "right": 2048, "top": 2048, "bottom": 2048}}, ("expand", "pixel limit")),
    ],
)
async def test_bad_mask_arguments_are_one_line_errors(client: Client, arguments: dict, needles: tuple[str, ...]) -> None:
    made = first(await client.call_tool("generate", {"prompt": "x", "width": 64, "height": 64, **FAST}))
    result = await client.call_tool("inpaint", {"prompt": "x", "image": made["id"], **FAST, **arguments})
    assert_one_line_error(result, *needles)


async def test_all_black_mask_image_is_refused(sd15_settings: Settings) -> None:
    async with Client(build_server(sd15_settings)) as client:
        result = await client.call_tool("inpaint", {"prompt": "x", "image": data_url(pattern((64, 64))),
                                                    "mask": data_url(Image.new("RGB", (64, 64))), **FAST})
    assert_one_line_error(result, "mask", "nothing to repaint")
