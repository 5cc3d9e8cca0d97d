"""`sweep` through the in-process MCP client with tiny real pipelines: cells, grids, placeholders, progress, cancellation."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import anyio
import numpy as np
import pytest
from disks import fill, small_disk  # noqa: F401 - small_disk is a fixture
from mcp import Client
from PIL import Image

from imgtools_mcp.config import Settings
from imgtools_mcp.infotext import parse_infotext
from imgtools_mcp.server import build_server
from imgtools_mcp.runs.sweep.axes import Axis, cell_arguments

pytestmark = pytest.mark.anyio

BASE = {"prompt": "a red cube", "width": 64, "height": 64, "steps": 2}


def pixels(path: str) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"), dtype=np.int16)


def tile_of(grid: dict, column: int, row: int) -> np.ndarray:
    left, width = grid["columns"][column]
    top, height = grid["rows"][row]
    return pixels(grid["path"])[top : top + height, left : left + width]


def sidecar(path: str) -> dict:
    return json.loads(Path(path).with_suffix(".json").read_text())


def assert_one_line_error(result, *needles: str) -> None:
    assert result.is_error, result.content
    text = result.content[0].text
    assert "\n" not in text and "Traceback" not in text, text
    for needle in needles:
        assert needle in text, text


async def test_3x2x2_sweep_makes_every_cell_and_labelled_grids(client: Client) -> None:
    seen: list[tuple[float, float | None, str | None]] = []

    async def progress(done: float, total: float | None, message: str | None) -> None:
        seen.append((done, total, message))

    result = await client.call_tool(
        "sweep",
        {
            "base": BASE,
            "x": {"param": "seed", "values": [1, 2, 3]},
            "y": {"param": "steps", "values": [1, 2]},
            "z": {"param": "sampler", "values": ["euler", "euler_a"]},
        },
        progress_callback=progress,
    )
    assert not result.is_error, result.content[0].text
    structured = result.structured_content
    assert structured["state"] == "done"
    cells = structured["cells"]
    assert len(cells) == 12 and all(cell["status"] == "done" for cell in cells)
    assert [(c["x"], c["y"], c["z"]) for c in cells[:4]] == [(0, 0, 0), (1, 0, 0), (2, 0, 0), (0, 1, 0)]
    for cell in cells:
        used = cell["parameters"]
        assert used["seed"] == [1, 2, 3][cell["x"]] == cell["image"]["seed"]
        assert used["steps"] == [1, 2][cell["y"]]
        assert used["sampler"] == ["euler", "euler_a"][cell["z"]]
        assert cell["values"] == {"seed": used["seed"], "steps": used["steps"], "sampler": used["sampler"]}
        made = sidecar(cell["image"]["path"])
        assert made["tool"] == "generate" and made["sweep"]["x"] == cell["x"] and made["sweep"]["z"] == cell["z"]
    assert len({cell["image"]["id"] for cell in cells}) == 12

    sheet, *per_z = structured["grids"]
    assert sheet["z"] is None and [g["z"] for g in per_z] == [0, 1]
    assert [g["title"] for g in per_z] == ["sampler: euler", "sampler: euler_a"]
    for grid in per_z:
        left, top = grid["columns"][0][0], grid["rows"][0][0]
        assert [c[1] for c in grid["columns"]] == [64, 64, 64] and [r[1] for r in grid["rows"]] == [64, 64]
        assert 0 < left < 200 and 0 < top < 200
        assert (grid["width"], grid["height"]) == (left + 3 * 64, top + 2 * 64)
        assert Image.open(grid["path"]).size == (grid["width"], grid["height"])
        image = pixels(grid["path"])
        # Labels are drawn: the title/column band and the row band hold ink, not just background.
        assert (image[:top, left:] < 160).all(axis=-1).sum() > 50
        assert (image[top:, :left] < 160).all(axis=-1).sum() > 50
        # Each tile is exactly the cell's PNG.
        for cell in (c for c in cells if c["z"] == grid["z"]):
            assert np.array_equal(tile_of(grid, cell["x"], cell["y"]), pixels(cell["image"]["path"]))
        listed = sidecar(grid["path"])
        assert listed["tool"] == "sweep" and len(listed["cells"]) == 6
    # The sheet holds both Z grids, side by side or stacked.
    sizes = [(g["width"], g["height"]) for g in per_z]
    assert (sheet["width"], sheet["height"]) != sizes[0]
    assert sheet["width"] >= sizes[0][0] and sheet["height"] >= sizes[0][1]
    assert len(sidecar(sheet["path"])["cells"]) == 12
    fields = parse_infotext(Image.open(sheet["path"]).text["parameters"])[2]
    assert fields["Script"] == "X/Y/Z plot" and fields["X Type"] == "seed" and fields["X Values"] == "1, 2, 3"
    assert "Seed" not in fields and "Steps" not in fields  # swept, so no single value

    # Thumbnails for the three grids only; links to every grid and every cell; inline bytes within budget.
    kinds = [block.type for block in result.content]
    assert kinds.count("image") == 3 and kinds.count("resource_link") == 3 + 12
    inline = sum(len(base64.b64decode(block.data)) for block in result.content if block.type == "image")
    assert inline <= 700_000
    links = {block.uri for block in result.content if block.type == "resource_link"}
    assert {cell["image"]["uri"] for cell in cells} <= links

    # One bar over the whole sweep: strictly increasing, ending at the total, naming cell and step.
    values = [done for done, _, _ in seen]
    assert values == sorted(values) and len(set(values)) == len(values)
    total = sum([1, 2][cell["y"]] for cell in cells)
    assert {t for _, t, _ in seen} == {total} and values[-1] == total
    steps = [item for item in seen if "step " in (item[2] or "")]
    assert steps[0] == (1, total, "cell 1 / 12, step 1 / 1")
    # A fresh server loads the model in the first cell: said before its first step, below it.
    loading = seen[: seen.index(steps[0])]
    assert loading and all(message.startswith("cell 1 / 12, load") and 0 < done < 1 for done, _, message in loading), loading
    assert any(message.startswith("cell 12 / 12, step 2 / 2") for _, _, message in seen)


async def test_thumbnail_of_a_big_grid_is_laid_out_again_with_legible_labels(client: Client) -> None:
    result = await client.call_tool(
        "sweep", {"base": {**BASE, "steps": 1}, "x": {"param": "seed", "values": list(range(16))}}
    )
    assert not result.is_error, result.content[0].text
    grid = result.structured_content["grids"][0]
    assert grid["width"] == 16 * 64
    (thumb_block,) = [block for block in result.content if block.type == "image"]
    thumb = np.asarray(Image.open(io.BytesIO(base64.b64decode(thumb_block.data))).convert("L"))
    assert max(thumb.shape) <= 768
    band = next(row for row in range(thumb.shape[0]) if (thumb[row] < 250).mean() > 0.8)  # first row of tiles
    # Shrinking the full grid would shrink its label band (and text) with it; the preview keeps the label size.
    shrunk_band = grid["rows"][0][0] * thumb.shape[1] / grid["width"]
    assert band >= grid["rows"][0][0] - 1 > shrunk_band + 4
    assert (thumb[:band] < 128).sum() > 100


async def test_invalid_values_become_placeholders_and_the_rest_run(client: Client) -> None:
    result = await client.call_tool(
        "sweep",
        {"base": BASE, "x": {"param": "steps", "values": [1, 0, 2]}, "y": {"param": "sampler", "values": ["euler", "k_bogus"]}},
    )
    assert not result.is_error, result.content[0].text
    cells = {(c["x"], c["y"]): c for c in result.structured_content["cells"]}
    assert cells[(0, 0)]["status"] == cells[(2, 0)]["status"] == "done"
    for key in ((1, 0), (1, 1)):
        assert cells[key]["status"] == "error" and "steps" in cells[key]["error"] and cells[key]["image"] is None
    for key in ((0, 1), (2, 1)):
        assert cells[key]["status"] == "error" and "sampler" in cells[key]["error"]
    assert "2/6 cells made, 4 failed" in result.content[0].text
    grid = result.structured_content["grids"][0]
    assert np.array_equal(tile_of(grid, 0, 0), pixels(cells[(0, 0)]["image"]["path"]))
    placeholder = tile_of(grid, 1, 0)
    assert (np.abs(placeholder - 72) <= 1).all(axis=-1).mean() > 0.5  # the dark placeholder fill
    assert (placeholder.min(axis=-1) > 200).sum() > 10  # carrying its error text
    # The server keeps serving.
    assert not (await client.call_tool("generate", {"prompt": "still here", **BASE})).is_error


async def test_same_seed_cell_matches_a_plain_generate(client: Client) -> None:
    swept = await client.call_tool(
        "sweep", {"base": {**BASE, "sampler": "euler_a"}, "x": {"param": "seed", "values": [5, 6]}}
    )
    plain = await client.call_tool("generate", {**BASE, "sampler": "euler_a", "seed": 6})
    cell = swept.structured_content["cells"][1]
    assert cell["image"]["seed"] == 6
    assert np.array_equal(pixels(cell["image"]["path"]), pixels(plain.structured_content["images"][0]["path"]))
    other = swept.structured_content["cells"][0]
    assert np.abs(pixels(other["image"]["path"]) - pixels(cell["image"]["path"])).max() > 0


async def test_one_seed_for_the_whole_sweep_when_none_is_given(client: Client) -> None:
    result = await client.call_tool(
        "sweep", {"base": {"prompt": "x", "width": 64, "height": 64}, "x": {"param": "steps", "values": [1, 2]}}
    )
    seeds = {cell["image"]["seed"] for cell in result.structured_content["cells"]}
    assert seeds == {result.structured_content["seed"]}


async def test_prompt_search_and_replace(client: Client) -> None:
    result = await client.call_tool(
        "sweep",
        {
            "base": {**BASE, "seed": 9, "negative_prompt": "red blur"},
            "x": {"param": "prompt_sr", "values": ["red", "blue", "green"]},
        },
    )
    cells = result.structured_content["cells"]
    assert [c["parameters"]["prompt"] for c in cells] == ["a red cube", "a blue cube", "a green cube"]
    assert [c["parameters"]["negative_prompt"] for c in cells] == ["red blur", "blue blur", "green blur"]
    assert [a["labels"] for a in result.structured_content["axes"]] == [
        ["prompt_sr: red", "prompt_sr: blue", "prompt_sr: green"]
    ]
    first, second = (pixels(c["image"]["path"]) for c in cells[:2])
    assert np.abs(first - second).max() > 0
    assert parse_infotext(Image.open(cells[1]["image"]["path"]).text["parameters"])[0] == "a blue cube"
    missing = await client.call_tool("sweep", {"base": BASE, "x": {"param": "prompt_sr", "values": ["purple", "blue"]}})
    assert_one_line_error(missing, "x.values", "purple", "base.prompt")


async def test_range_axes(client: Client) -> None:
    result = await client.call_tool(
        "sweep",
        {
            "base": {**BASE, "seed": 1},
            "x": {"param": "guidance_scale", "start": 1, "stop": 2, "count": 3},
            "y": {"param": "width", "start": 64, "stop": 98, "count": 2},
        },
    )
    assert not result.is_error, result.content[0].text
    axes = result.structured_content["axes"]
    assert axes[0]["values"] == [1.0, 1.5, 2.0] and axes[0]["labels"][1] == "guidance_scale: 1.5"
    assert axes[1]["values"] == [64, 96]  # sizes snap to multiples of 8
    cells = result.structured_content["cells"]
    assert [c["parameters"]["guidance_scale"] for c in cells[:3]] == [1.0, 1.5, 2.0]
    assert [c["image"]["width"] for c in cells] == [64, 64, 64, 96, 96, 96]
    grid = result.structured_content["grids"][0]
    assert [c[1] for c in grid["columns"]] == [96, 96, 96]  # the widest tile of the column sets its width
    steps = await client.call_tool(
        "sweep", {"base": BASE, "x": {"param": "steps", "start": 1, "stop": 4, "count": 3}}
    )
    assert steps.structured_content["axes"][0]["values"] == [1, 3, 4]  # 2.5 rounds half up
    repeated = await client.call_tool(
        "sweep", {"base": BASE, "x": {"param": "steps", "start": 1, "stop": 2, "count": 3}}
    )
    assert repeated.structured_content["axes"][0]["values"] == [1, 2, 2]
    assert repeated.structured_content["warnings"] == ["x: steps: 2 more than once"]
    assert "steps: 2 more than once" in repeated.content[0].text


async def test_model_changes_run_outermost(client: Client, tiny_sdxl: Path) -> None:
    result = await client.call_tool(
        "sweep",
        {
            "base": BASE,
            "x": {"param": "model", "values": [None, str(tiny_sdxl)]},
            "y": {"param": "seed", "values": [1, 2]},
        },
    )
    assert not result.is_error, result.content[0].text
    structured = result.structured_content
    assert structured["run_order"] == ["model", "seed"]
    assert structured["axes"][0]["labels"] == ["model: default", "model: tiny-sdxl"]
    cells = structured["cells"]  # listed row by row: model alternates
    made = sorted(cells, key=lambda c: sidecar(c["image"]["path"])["created"])
    assert [c["x"] for c in made] == [0, 0, 1, 1]
    assert {c["parameters"]["model"] for c in cells if c["x"] == 1} == {str(tiny_sdxl)}


async def test_background_sweep_returns_a_job_and_get_job_the_result(client: Client) -> None:
    started = await client.call_tool(
        "sweep", {"base": BASE, "x": {"param": "seed", "values": [1, 2]}, "background": True}
    )
    assert not started.is_error, started.content[0].text
    job_id = started.structured_content["job_id"]
    assert job_id and started.structured_content["state"] == "started"
    status = await client.call_tool("get_job", {"job_id": job_id, "wait_s": 60})
    assert status.structured_content["state"] == "done"
    result = status.structured_content["result"]
    assert [c["status"] for c in result["cells"]] == ["done", "done"]
    assert Path(result["grids"][0]["path"]).is_file()
    assert [b.type for b in status.content].count("image") == 1


async def test_background_sweep_returns_its_job_before_any_model_is_resolved(client: Client) -> None:
    # Bad axes or counts are refused by the call; resolving (or downloading) the models happens inside the job.
    refused = await client.call_tool(
        "sweep", {"base": BASE, "x": {"param": "colour", "values": [1]}, "background": True}
    )
    assert_one_line_error(refused, "x.param", "colour")
    started = await client.call_tool(
        "sweep",
        {"base": {**BASE, "model": "nobody/not-in-cache"}, "x": {"param": "seed", "values": [1, 2]}, "background": True},
    )
    assert not started.is_error, started.content[0].text
    assert started.structured_content["state"] == "started" and "(2 cells)" in started.content[0].text
    with anyio.fail_after(60):
        status = await client.call_tool("get_job", {"job_id": started.structured_content["job_id"], "wait_s": 30})
    job = status.structured_content
    assert job["state"] == "error" and job["error"].startswith("model:") and "nobody/not-in-cache" in job["error"], job


async def test_a_fresh_sweep_reports_loading_before_its_first_step_on_one_rising_bar(client: Client) -> None:
    seen: list[tuple[float, float | None, str | None]] = []

    async def progress(done: float, total: float | None, message: str | None) -> None:
        seen.append((done, total, message))

    result = await client.call_tool(
        "sweep", {"base": BASE, "x": {"param": "seed", "values": [1, 2]}}, progress_callback=progress
    )
    assert not result.is_error, result.content[0].text
    values = [s[0] for s in seen]
    assert values == sorted(set(values)), seen
    first_step = next(i for i, s in enumerate(seen) if "step 1 /" in (s[2] or ""))
    assert first_step > 0 and all("loading " in (s[2] or "") or "loaded " in (s[2] or "") for s in seen[:first_step]), seen
    assert seen[first_step][0] == 1 and {s[1] for s in seen} == {4}


async def test_cancel_job_keeps_finished_cells_and_returns_their_grid(client: Client) -> None:
    started = await client.call_tool(
        "sweep", {"base": BASE, "x": {"param": "steps", "values": [1, 1, 150, 150]}, "background": True}
    )
    job_id = started.structured_content["job_id"]
    with anyio.fail_after(60):
        while True:  # until the first long cell is denoising
            status = await client.call_tool("get_job", {"job_id": job_id})
            message = status.structured_content["message"] or ""
            if message.startswith("cell 3 / 4"):
                break
            assert status.structured_content["state"] in ("queued", "running"), status.content[0].text
            await anyio.sleep(0.01)
        cancelled = await client.call_tool("cancel_job", {"job_id": job_id})
    assert cancelled.structured_content["state"] == "cancelled"
    result = cancelled.structured_content["result"]
    assert result["state"] == "cancelled"
    assert [c["status"] for c in result["cells"]] == ["done", "done", "cancelled", "cancelled"]
    assert all(Path(c["image"]["path"]).is_file() for c in result["cells"][:2])
    grid = result["grids"][0]
    assert np.array_equal(tile_of(grid, 1, 0), pixels(result["cells"][1]["image"]["path"]))
    assert sidecar(grid["path"])["sweep"]["state"] == "cancelled"
    assert [b.type for b in cancelled.content].count("image") == 1
    # The engine is free again at once.
    with anyio.fail_after(30):
        assert not (await client.call_tool("generate", {"prompt": "next", **BASE})).is_error


async def test_cancelled_request_leaves_finished_cells_listed_on_disk(settings: Settings) -> None:
    reached_third = anyio.Event()

    async def progress(done: float, total: float | None, message: str | None) -> None:
        if message and message.startswith("cell 3 / 4"):
            reached_third.set()

    async with Client(build_server(settings)) as client:
        async with anyio.create_task_group() as tg:

            async def sweep() -> None:
                await client.call_tool(
                    "sweep",
                    {"base": BASE, "x": {"param": "steps", "values": [1, 1, 150, 150]}},
                    progress_callback=progress,
                )

            tg.start_soon(sweep)
            with anyio.fail_after(60):
                await reached_third.wait()
            tg.cancel_scope.cancel()
        with anyio.fail_after(30):
            grids: list[dict] = []
            while not grids:  # the server finishes the grid after the request is gone
                grids = [
                    meta
                    for path in settings.output_dir.glob("*.json")
                    if (meta := json.loads(path.read_text())).get("tool") == "sweep"
                ]
                await anyio.sleep(0.01)
        (grid,) = grids
        assert grid["sweep"]["state"] == "cancelled"
        assert [c["status"] for c in grid["cells"]] == ["done", "done", "cancelled", "cancelled"]
        assert all(Path(c["image"]["path"]).is_file() for c in grid["cells"][:2])
        assert not (await client.call_tool("generate", {"prompt": "next", **BASE})).is_error


async def test_cell_limit_and_grid_pixel_limit(tmp_path: Path, tiny_sd15: Path) -> None:
    limited = Settings(
        model=str(tiny_sd15), output_dir=tmp_path / "out", device="cpu", hf_offline=True,
        max_sweep_cells=4, max_grid_pixels=20_000,
    )
    async with Client(build_server(limited)) as client:
        too_many = await client.call_tool(
            "sweep", {"base": BASE, "x": {"param": "seed", "values": [1, 2, 3]}, "y": {"param": "steps", "values": [1, 2]}}
        )
        assert_one_line_error(too_many, "6 cells", "IMGTOOLS_MAX_SWEEP_CELLS=4")
        too_big = await client.call_tool(
            "sweep", {"base": {**BASE, "width": 128, "height": 128}, "x": {"param": "seed", "values": [1, 2]}}
        )
        assert_one_line_error(too_big, "grid", "IMGTOOLS_MAX_GRID_PIXELS=20000", "grid_scale")
        assert not any(limited.output_dir.glob("*.png"))  # refused before any cell ran
        scaled = await client.call_tool(
            "sweep",
            {"base": {**BASE, "width": 128, "height": 128}, "x": {"param": "seed", "values": [1, 2]}, "grid_scale": 0.25},
        )
        assert not scaled.is_error, scaled.content[0].text
        grid = scaled.structured_content["grids"][0]
        assert [c[1] for c in grid["columns"]] == [32, 32] and grid["width"] * grid["height"] <= 20_000
        assert scaled.structured_content["cells"][0]["image"]["width"] == 128  # cells stay full size


@pytest.mark.parametrize(
    "arguments, needles",
    [
        ({"base": BASE, "x": {"param": "colour", "values": [1]}}, ["x.param", "colour", "allowed", "seed"]),
        ({"base": BASE, "x": {"param": "strength", "values": [0.5]}}, ["x.param", "strength", "generate"]),
        ({"base": BASE, "x": {"param": "image", "values": ["a"]}}, ["x.param", "image"]),
        ({"base": BASE, "x": {"param": "seed", "values": [1], "start": 1}}, ["x", "either values or start/stop/count"]),
        ({"base": BASE, "x": {"param": "seed"}}, ["x", "start, stop and count"]),
        ({"base": BASE, "x": {"param": "seed", "values": []}}, ["x.values"]),
        ({"base": BASE, "x": {"param": "sampler", "start": 1, "stop": 2, "count": 2}}, ["x", "numeric", "sampler"]),
        ({"base": BASE, "x": {"param": "seed", "values": [1]}, "y": {"param": "seed", "values": [2]}}, ["y.param", "already swept on x"]),
        ({"base": BASE, "x": {"param": "size", "values": ["64x64"]}, "y": {"param": "width", "values": [64]}}, ["y.param", "width"]),
        ({"base": {**BASE, "steps": 0}, "x": {"param": "seed", "values": [1]}}, ["base.steps"]),
        ({"base": {"width": 64}, "x": {"param": "seed", "values": [1]}}, ["base.prompt", "required"]),
        ({"base": {**BASE, "colour": 1}, "x": {"param": "seed", "values": [1]}}, ["base.colour", "unknown parameter"]),
        ({"base": {**BASE, "num_images": 2}, "x": {"param": "seed", "values": [1]}}, ["base.num_images"]),
        ({"base": BASE, "x": {"param": "steps", "values": [0]}}, ["no cell", "steps"]),
        ({"base": BASE}, ["x", "required"]),
        ({"base": BASE, "tool": "upscale", "x": {"param": "seed", "values": [1]}}, ["tool"]),
        ({"base": BASE, "x": {"param": "seed", "values": [1]}, "grid_scale": 0}, ["grid_scale"]),
        ({"base": BASE, "x": {"param": "seed", "start": 0, "stop": 9, "count": 10**9}}, ["x.count", "1000"]),
        ({"base": BASE, "x": {"param": "seed", "start": 0, "stop": 9, "count": 1000}}, ["1000 cells", "IMGTOOLS_MAX_SWEEP_CELLS"]),
    ],
)
async def test_bad_sweeps_are_one_line_errors_up_front(client: Client, arguments: dict, needles: list[str]) -> None:
    assert_one_line_error(await client.call_tool("sweep", arguments), *needles)
    assert not (await client.call_tool("generate", {"prompt": "still here", **BASE})).is_error


async def test_lora_weight_axis_sets_that_lora(client: Client) -> None:
    lora = Axis("x", "lora:ink", [0.5], ["lora:ink: 0.5"])
    args = cell_arguments({"prompt": "p", "loras": [{"name": "ink", "weight": 1.0}, {"name": "other", "weight": 0.3}]}, [(lora, 0.5)])
    assert args["loras"] == [{"name": "ink", "weight": 0.5}, {"name": "other", "weight": 0.3}]
    assert cell_arguments({"prompt": "p"}, [(lora, 0.25)])["loras"] == [{"name": "ink", "weight": 0.25}]
    # The weight is checked like any LoRA weight; a sweep whose every cell is invalid is refused up front.
    result = await client.call_tool("sweep", {"base": BASE, "x": {"param": "lora:ink", "values": [9]}})
    assert_one_line_error(result, "no cell", "loras.0.weight", "9")


async def test_size_axis(client: Client) -> None:
    result = await client.call_tool(
        "sweep", {"base": {**BASE, "seed": 3}, "x": {"param": "size", "values": ["64x96", [96, 64], "big"]}}
    )
    cells = result.structured_content["cells"]
    assert [(c["image"]["width"], c["image"]["height"]) for c in cells[:2]] == [(64, 96), (96, 64)]
    assert cells[2]["status"] == "error" and "WIDTHxHEIGHT" in cells[2]["error"]


@pytest.fixture
def counting_image_server(tmp_path: Path):
    """A loopback HTTP server for one PNG that counts how often it is fetched."""
    import io
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(buffer, "PNG")
    body = buffer.getvalue()
    fetches: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:
            pass

        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            fetches.append(self.path)
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/input.png", fetches
    server.shutdown()
    thread.join()


async def test_edit_sweep_resolves_the_image_once(settings: Settings, counting_image_server) -> None:
    url, fetches = counting_image_server
    # The image server is on loopback, which URLs reach only when IMGTOOLS_ALLOW_PRIVATE_URLS names it.
    async with Client(build_server(settings.model_copy(update={"allow_private_urls": ["127.0.0.1"]}))) as client:
        result = await client.call_tool(
            "sweep",
            {"tool": "edit", "base": {"prompt": "a blue cube", "image": url, "steps": 4, "seed": 1},
             "x": {"param": "strength", "values": [0.5, 1.0, 0.1]}},
        )
    assert not result.is_error, result.content[0].text
    cells = result.structured_content["cells"]
    assert [c["status"] for c in cells] == ["done", "done", "error"]
    assert "strength" in cells[2]["error"]  # 0.1 x 4 steps leaves no denoising step
    assert [c["parameters"]["strength"] for c in cells[:2]] == [0.5, 1.0]
    assert sidecar(cells[0]["image"]["path"])["tool"] == "edit"
    assert len(fetches) == 1


async def test_base64_input_is_shortened_in_what_the_sweep_reports(client: Client) -> None:
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(buffer, "PNG")
    data_url = "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()
    result = await client.call_tool(
        "sweep",
        {"tool": "edit", "base": {"prompt": "p", "image": data_url, "steps": 2, "seed": 1},
         "x": {"param": "strength", "values": [0.5, 1.0]}},
    )
    assert not result.is_error, result.content[0].text
    reported = result.structured_content["base"]["image"]
    assert reported.startswith("data:image/png;base64,") and len(reported) < 100 < len(data_url)
    assert len(json.dumps(sidecar(result.structured_content["grids"][0]["path"]))) < len(data_url)


async def test_inpaint_sweep_over_mask_blur_keeps_pixels_outside_the_mask(client: Client) -> None:
    source = await client.call_tool("generate", {**BASE, "seed": 4})
    image = source.structured_content["images"][0]
    result = await client.call_tool(
        "sweep",
        {"tool": "inpaint",
         "base": {"prompt": "a hole", "image": image["id"], "steps": 2, "seed": 1,
                  "mask_shapes": [{"type": "rect", "x": 0.5, "y": 0, "width": 0.5, "height": 1}]},
         "x": {"param": "mask_blur", "values": [0, 4]}},
    )
    assert not result.is_error, result.content[0].text
    cells = result.structured_content["cells"]
    assert [c["parameters"]["mask_blur"] for c in cells] == [0, 4]
    original = pixels(image["path"])
    for cell in cells:
        assert np.array_equal(pixels(cell["image"]["path"])[:, :16], original[:, :16])


async def test_unknown_base_parameter_of_the_chosen_tool(client: Client) -> None:
    result = await client.call_tool(
        "sweep", {"tool": "edit", "base": {"prompt": "x"}, "x": {"param": "strength", "values": [0.5]}}
    )
    assert_one_line_error(result, "base.image", "required")


async def test_a_full_disk_mid_sweep_keeps_the_finished_cells_and_names_what_was_not_written(
    small_disk: Path, tiny_sd15: Path
) -> None:
    settings = Settings(model=str(tiny_sd15), output_dir=small_disk / "out", device="cpu", hf_offline=True)
    filled: list[Path] = []

    async def progress(done: float, total: float | None, message: str | None) -> None:
        if message and message.startswith("cell 3 / 4") and not filled:
            filled.append(fill(small_disk))  # the disk fills while the third cell is denoising

    async with Client(build_server(settings)) as client:
        result = await client.call_tool(
            "sweep", {"base": BASE, "x": {"param": "seed", "values": [1, 2, 3, 4]}}, progress_callback=progress
        )
        assert result.is_error and filled
        text = result.content[0].text
        assert "No space left on device" in text and "cell 3" in text, text
        structured = result.structured_content
        assert structured["state"] == "error" and "cell 3" in structured["error"]
        cells = structured["cells"]
        assert [c["status"] for c in cells] == ["done", "done", "error", "cancelled"]
        assert all(Path(c["image"]["path"]).is_file() for c in cells[:2])
        assert "IMGTOOLS_OUTPUT_DIR" in cells[2]["error"] and "not run" in cells[3]["error"]
        assert "grid" in structured["error"] and structured["grids"] == []  # the grid could not be written either
        filled[0].unlink()
        assert not (await client.call_tool("generate", {"prompt": "fits again", **BASE})).is_error
