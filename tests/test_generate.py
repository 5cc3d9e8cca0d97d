"""`generate` through the in-process MCP client with tiny real pipelines of both families."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import anyio
import numpy as np
import pytest
from mcp import Client
from PIL import Image

from imgtools_mcp.config import Settings
from imgtools_mcp.infotext import parse_infotext
from imgtools_mcp.server import build_server

pytestmark = pytest.mark.anyio

SMALL = {"width": 64, "height": 64, "steps": 2}


def png_of(result) -> Image.Image:
    return Image.open(result.structured_content["images"][0]["path"])


def pixels(result, index: int = 0) -> np.ndarray:
    return np.asarray(Image.open(result.structured_content["images"][index]["path"]).convert("RGB"), dtype=np.int16)


async def test_tool_list_and_schemas(client: Client) -> None:
    tools = {tool.name: tool for tool in (await client.list_tools()).tools}
    assert {"generate", "get_job", "cancel_job"} <= set(tools)
    generate = tools["generate"]
    props = generate.input_schema["properties"]
    for name in ("prompt", "negative_prompt", "model", "width", "height", "steps", "guidance_scale", "sampler",
                 "seed", "num_images", "loras", "background"):
        assert name in props, name
        assert props[name].get("description"), name
    assert generate.input_schema["required"] == ["prompt"]
    assert "dpmpp_2m_karras" in json.dumps(props["sampler"])
    assert generate.output_schema is not None
    assert {"images", "parameters", "timings"} <= set(generate.output_schema["properties"])


async def test_generate_both_families(family_settings) -> None:
    async with Client(build_server(family_settings)) as client:
        result = await client.call_tool("generate", {"prompt": "a red cube", "width": 64, "height": 80, "steps": 2, "seed": 7})
    assert not result.is_error, result.content
    kinds = [block.type for block in result.content]
    assert kinds == ["text", "image", "resource_link"]
    thumb = Image.open(io.BytesIO(base64.b64decode(result.content[1].data)))
    assert thumb.size == (64, 80)
    assert result.content[1].mime_type in ("image/webp", "image/jpeg")
    structured = result.structured_content
    image = structured["images"][0]
    assert result.content[2].uri == image["uri"] == f"imgtools://images/{image['id']}"
    assert Image.open(image["path"]).size == (64, 80)
    assert structured["parameters"]["seed"] == 7 and image["seed"] == 7
    assert structured["engine"]["device"] == "cpu"
    # The infotext chunk parses back to the parameters used.
    prompt, negative, fields = parse_infotext(Image.open(image["path"]).text["parameters"])
    assert prompt == "a red cube" and negative == ""
    assert fields["Steps"] == "2" and fields["Seed"] == "7" and fields["Size"] == "64x80"
    assert float(fields["CFG scale"]) == structured["parameters"]["guidance_scale"]
    sidecar = json.loads(open(image["path"].removesuffix(".png") + ".json").read())
    assert sidecar["parameters"]["seed"] == 7 and sidecar["tool"] == "generate"


async def test_defaults_come_from_the_family(client: Client) -> None:
    result = await client.call_tool("generate", {"prompt": "x", "steps": 1})
    params = result.structured_content["parameters"]
    # The tiny model's native size is its UNet sample_size times the VAE scale factor, as diffusers computes it.
    assert (params["width"], params["height"]) == (64, 64)
    assert params["guidance_scale"] == 7.0
    assert isinstance(params["seed"], int)


async def test_same_seed_same_pixels_other_seed_differs(client: Client) -> None:
    a = await client.call_tool("generate", {"prompt": "a tree", **SMALL, "seed": 42})
    b = await client.call_tool("generate", {"prompt": "a tree", **SMALL, "seed": 42})
    c = await client.call_tool("generate", {"prompt": "a tree", **SMALL, "seed": 43})
    assert a.structured_content["images"][0]["id"] != b.structured_content["images"][0]["id"]
    assert np.array_equal(pixels(a), pixels(b))
    assert np.abs(pixels(a) - pixels(c)).max() > 0


async def test_num_images_use_consecutive_seeds(client: Client) -> None:
    many = await client.call_tool("generate", {"prompt": "a tree", **SMALL, "seed": 100, "num_images": 3})
    assert [i["seed"] for i in many.structured_content["images"]] == [100, 101, 102]
    assert [b.type for b in many.content].count("image") == 3
    assert [b.type for b in many.content].count("resource_link") == 3


async def test_omitted_seed_is_random_and_reported(client: Client) -> None:
    seeds = set()
    for _ in range(2):
        result = await client.call_tool("generate", {"prompt": "x", **SMALL})
        seeds.add(result.structured_content["images"][0]["seed"])
        assert str(result.structured_content["images"][0]["seed"]) in result.content[0].text
    assert len(seeds) == 2


async def test_every_sampler_runs(client: Client) -> None:
    for sampler in ("euler", "euler_a", "dpmpp_2m", "dpmpp_2m_karras", "ddim", "unipc", "lcm", "default"):
        result = await client.call_tool("generate", {"prompt": "x", **SMALL, "sampler": sampler, "seed": 1})
        assert not result.is_error, (sampler, result.content[0].text)
        fields = parse_infotext(png_of(result).text["parameters"])[2]
        assert fields["Sampler"], sampler


async def test_one_progress_notification_per_step_after_the_load_is_reported(client: Client, settings: Settings) -> None:
    seen: list[tuple[float, float | None, str | None]] = []

    async def progress(done: float, total: float | None, message: str | None) -> None:
        seen.append((done, total, message))

    result = await client.call_tool("generate", {"prompt": "x", "width": 64, "height": 64, "steps": 5}, progress_callback=progress)
    assert not result.is_error
    steps = [s for s in seen if (s[2] or "").startswith("step ")]
    assert [s[0] for s in steps] == [1, 2, 3, 4, 5]
    assert {s[1] for s in seen} == {5}
    assert seen[-1][2] == "step 5 / 5"
    # A fresh server loads the model first: that is reported before step 1, below it, rising (MCP asks for rising progress).
    loading = seen[: len(seen) - len(steps)]
    assert loading and all(0 < s[0] < 1 for s in loading), seen
    assert any(s[2].startswith(f"loading {Path(settings.model).name}") for s in loading), loading
    values = [s[0] for s in seen]
    assert values == sorted(set(values)), values

    # Loaded now: the next call reports its steps and nothing else.
    seen.clear()
    await client.call_tool("generate", {"prompt": "x", "width": 64, "height": 64, "steps": 5}, progress_callback=progress)
    assert [s[0] for s in seen] == [1, 2, 3, 4, 5]


async def test_hires_progress_runs_on_over_both_passes(client: Client) -> None:
    seen: list[tuple[float, float | None, str | None]] = []

    async def progress(done: float, total: float | None, message: str | None) -> None:
        seen.append((done, total, message))

    hires = {"scale": 2, "denoise": 0.5}
    result = await client.call_tool(
        "generate", {"prompt": "x", **SMALL, "steps": 4, "num_images": 2, "hires": hires}, progress_callback=progress
    )
    assert not result.is_error, result.content[0].text
    values = [s[0] for s in seen]
    assert values == sorted(set(values)), seen  # the hires pass's steps start again at 1; the bar does not
    # First pass 4 steps, then each image's hires pass (4 x 0.5 = 2 steps): one bar of 8.
    steps = [(s[0], s[2]) for s in seen if "step " in (s[2] or "")]
    assert [value for value, _ in steps] == [1, 2, 3, 4, 5, 6, 7, 8]
    assert [message for _, message in steps][4:] == [
        "hires: image 1 / 2, step 1 / 2", "hires: image 1 / 2, step 2 / 2",
        "hires: image 2 / 2, step 1 / 2", "hires: image 2 / 2, step 2 / 2",
    ]
    assert {s[1] for s in seen} == {8}


async def test_cancelled_call_stops_and_engine_is_free(client: Client) -> None:
    first_step = anyio.Event()
    steps: list[float] = []

    async def progress(done: float, total: float | None, message: str | None) -> None:
        if (message or "").startswith("step "):  # denoising, not the load reported before it
            steps.append(done)
            first_step.set()

    async with anyio.create_task_group() as tg:
        async def long_call() -> None:
            await client.call_tool("generate", {"prompt": "x", "width": 256, "height": 256, "steps": 150}, progress_callback=progress)

        tg.start_soon(long_call)
        with anyio.fail_after(60):
            await first_step.wait()
        tg.cancel_scope.cancel()
    # The next call must get the engine: it would wait for the whole 150-step run if cancellation did not stop it.
    with anyio.fail_after(60):
        result = await client.call_tool("generate", {"prompt": "y", **SMALL, "seed": 3})
    assert not result.is_error
    assert len(steps) < 150


@pytest.mark.parametrize(
    "arguments, parameter",
    [
        ({"prompt": "x", "width": 100}, "width"),
        ({"prompt": "x", "height": 63}, "height"),
        ({"prompt": "x", "width": 4096, "height": 4096}, "width/height"),
        ({"prompt": "x", "steps": 0}, "steps"),
        ({"prompt": "x", "steps": 1000}, "steps"),
        ({"prompt": "x", "guidance_scale": -1}, "guidance_scale"),
        ({"prompt": "x", "num_images": 9}, "num_images"),
        ({"prompt": "x", "num_images": 0}, "num_images"),
        ({"prompt": "x", "sampler": "k_lms_bogus"}, "sampler"),
        ({"prompt": "x", "model": "/no/such/folder"}, "model"),
        ({"prompt": "x", "model": "nobody/not-in-cache"}, "model"),
        ({"prompt": ""}, "prompt"),
        ({}, "prompt"),
        ({"prompt": "x", "seed": "abc"}, "seed"),
        ({"prompt": "x", "colour": "red"}, "colour"),
    ],
)
async def test_bad_input_is_a_one_line_tool_error(client: Client, arguments: dict, parameter: str) -> None:
    result = await client.call_tool("generate", arguments)
    assert result.is_error
    text = result.content[0].text
    assert parameter in text, text
    assert "\n" not in text and "Traceback" not in text
    # The server still answers.
    ok = await client.call_tool("generate", {"prompt": "still here", **SMALL})
    assert not ok.is_error


async def test_resources_serve_png_and_metadata_and_survive_restart(settings) -> None:
    async with Client(build_server(settings)) as client:
        result = await client.call_tool("generate", {"prompt": "kept", **SMALL, "seed": 5})
        image = result.structured_content["images"][0]
    # A new server over the same output folder: the id still resolves.
    async with Client(build_server(settings)) as client:
        png = await client.read_resource(image["uri"])
        meta = await client.read_resource(image["metadata_uri"])
    blob = png.contents[0]
    assert blob.mime_type == "image/png"
    assert Image.open(io.BytesIO(base64.b64decode(blob.blob))).size == (64, 64)
    assert json.loads(meta.contents[0].text)["seed"] == 5


async def test_background_returns_its_job_before_the_model_is_resolved(client: Client) -> None:
    # Resolving (or downloading) a model may take minutes: it happens inside the job, which reports what failed.
    started = await client.call_tool("generate", {"prompt": "x", **SMALL, "model": "nobody/not-in-cache", "background": True})
    assert not started.is_error, started.content[0].text
    with anyio.fail_after(60):
        status = await client.call_tool("get_job", {"job_id": started.structured_content["job_id"], "wait_s": 30})
    job = status.structured_content
    assert job["state"] == "error" and job["error"].startswith("model:"), job
