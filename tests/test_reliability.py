"""Faults through the real client: background jobs, cancellation, pipelines that raise or run out of memory, a full disk."""

from __future__ import annotations

import base64
import io
import json
import shutil
from pathlib import Path

import anyio
import pytest
import torch
from disks import fill, small_disk  # noqa: F401 - small_disk is a fixture
from mcp import Client
from PIL import Image

from imgtools_mcp.config import Settings
from imgtools_mcp.engine.engine import Engine
from imgtools_mcp.server import build_server

pytestmark = pytest.mark.anyio

SMALL = {"width": 64, "height": 64, "steps": 2}
LONG = {"width": 128, "height": 128, "steps": 150}  # minutes on a CPU: only ever cancelled


async def wait_for_progress(client: Client, job_id: str) -> dict:
    """Poll get_job until the job has done a denoising step (the job runs in the server; nothing to wait on here)."""
    with anyio.fail_after(120):
        while True:
            status = (await client.call_tool("get_job", {"job_id": job_id})).structured_content
            if status["progress"] >= 1:
                return status
            assert status["state"] in ("queued", "running"), status
            await anyio.sleep(0.05)


def one_line(result) -> str:
    text = result.content[0].text
    assert "\n" not in text and "Traceback" not in text, text
    return text


async def test_background_job_returns_at_once_and_get_job_gives_the_foreground_content(client: Client) -> None:
    foreground = await client.call_tool("generate", {"prompt": "a lamp", **SMALL, "seed": 11})
    started = await client.call_tool("generate", {"prompt": "a lamp", **SMALL, "seed": 11, "background": True})
    assert not started.is_error, started.content
    job_id = started.structured_content["job_id"]
    assert job_id and job_id in started.content[0].text
    assert started.structured_content["images"] == []
    with anyio.fail_after(120):
        done = await client.call_tool("get_job", {"job_id": job_id, "wait_s": 60})
    status = done.structured_content
    assert status["state"] == "done", status
    assert status["progress"] == status["total"] == 2
    # Same content as the foreground call: its summary line, a thumbnail and a link per image; same typed result.
    assert [b.type for b in done.content] == ["text", *[b.type for b in foreground.content]]
    result = status["result"]
    assert result["parameters"] == foreground.structured_content["parameters"]
    background_png = Image.open(result["images"][0]["path"])
    foreground_png = Image.open(foreground.structured_content["images"][0]["path"])
    assert background_png.tobytes() == foreground_png.tobytes()  # same seed, same pixels
    # The record is on disk in the output folder.
    record = json.loads((Path(result["images"][0]["path"]).parent / "jobs" / f"{job_id}.json").read_text())
    assert record["state"] == "done"


async def test_cancel_job_stops_at_the_next_step_and_frees_the_engine(client: Client) -> None:
    kept = await client.call_tool("generate", {"prompt": "finished before", **SMALL})
    started = await client.call_tool("generate", {"prompt": "long", **LONG, "background": True})
    job_id = started.structured_content["job_id"]
    await wait_for_progress(client, job_id)
    with anyio.fail_after(60):
        cancelled = await client.call_tool("cancel_job", {"job_id": job_id})
    status = cancelled.structured_content
    assert status["state"] == "cancelled", status
    assert 1 <= status["progress"] < 150
    with anyio.fail_after(60):
        after = await client.call_tool("generate", {"prompt": "next", **SMALL})
    assert not after.is_error
    # What was finished before is still there.
    png = await client.read_resource(kept.structured_content["images"][0]["uri"])
    assert Image.open(io.BytesIO(base64.b64decode(png.contents[0].blob))).size == (64, 64)
    # Cancelling again, or an unknown job, is a clear answer.
    again = await client.call_tool("cancel_job", {"job_id": job_id})
    assert again.structured_content["state"] == "cancelled"
    unknown = await client.call_tool("get_job", {"job_id": "job-000000000000"})
    assert unknown.is_error and "job_id" in one_line(unknown)


async def test_a_request_over_its_time_limit_stops_and_frees_the_engine(tiny_sd15: Path, tmp_path: Path) -> None:
    settings = Settings(model=str(tiny_sd15), output_dir=tmp_path / "out", device="cpu", hf_offline=True, request_timeout_s=1, cache_dir=tmp_path / "cache")
    async with Client(build_server(settings)) as client:
        # The limit covers loading too; a load cut short still finishes in its thread and leaves the model cached.
        for _ in range(3):
            if not (await client.call_tool("generate", {"prompt": "warm", **SMALL})).is_error:
                break
        else:
            pytest.fail("a 64 px, 2 step request never fitted in 1 s")
        with anyio.fail_after(60):
            slow = await client.call_tool("generate", {"prompt": "too slow", **LONG})
        assert slow.is_error
        assert "timed out after 1 s (IMGTOOLS_REQUEST_TIMEOUT_S)" in one_line(slow)
        with anyio.fail_after(60):
            assert not (await client.call_tool("generate", {"prompt": "next", **SMALL})).is_error


@pytest.fixture
def broken_models(tiny_sd15: Path, tmp_path: Path) -> dict[str, Path]:
    """Copies of the tiny model with one config broken: one fails while denoising, one fails to load."""
    denoise = tmp_path / "bad-scheduler"
    shutil.copytree(tiny_sd15, denoise)
    config = json.loads((denoise / "scheduler" / "scheduler_config.json").read_text())
    config["prediction_type"] = "no_such_prediction"
    (denoise / "scheduler" / "scheduler_config.json").write_text(json.dumps(config))
    load = tmp_path / "bad-unet"
    shutil.copytree(tiny_sd15, load)
    unet = json.loads((load / "unet" / "config.json").read_text())
    unet["cross_attention_dim"] = 48  # no longer matches the weights on disk
    (load / "unet" / "config.json").write_text(json.dumps(unet))
    return {"denoise": denoise, "load": load}


async def test_a_pipeline_that_raises_fails_the_request_not_the_server(client: Client, broken_models: dict[str, Path]) -> None:
    before = await client.call_tool("generate", {"prompt": "before the fault", **SMALL})
    assert not before.is_error
    failed = await client.call_tool("generate", {"prompt": "x", **SMALL, "model": str(broken_models["denoise"])})
    assert failed.is_error
    text = one_line(failed)
    assert "model:" in text and "no_such_prediction" in text
    unloadable = await client.call_tool("generate", {"prompt": "x", **SMALL, "model": str(broken_models["load"])})
    assert unloadable.is_error and "model" in one_line(unloadable)
    # As a background job the failure is the job's result.
    job = await client.call_tool("generate", {"prompt": "x", **SMALL, "model": str(broken_models["denoise"]), "background": True})
    with anyio.fail_after(120):
        status = (await client.call_tool("get_job", {"job_id": job.structured_content["job_id"], "wait_s": 60})).structured_content
    assert status["state"] == "error" and "no_such_prediction" in status["error"]
    # The server goes on, and what it made before the fault is intact.
    after = await client.call_tool("generate", {"prompt": "after the fault", **SMALL})
    assert not after.is_error
    png = await client.read_resource(before.structured_content["images"][0]["uri"])
    assert png.contents[0].mime_type == "image/png"


async def test_out_of_memory_escalates_the_plan_once_then_is_a_clear_error(settings: Settings) -> None:
    # The torch backend runs the UNet module itself, so a forward hook on it sits inside the real denoising loop.
    settings = settings.model_copy(update={"backend": "torch"})
    engine = Engine(settings)
    async with Client(build_server(settings, engine=engine)) as client:
        assert not (await client.call_tool("generate", {"prompt": "warm", **SMALL})).is_error
        unet = engine.cache.loaded()[0].base.unet
        failures = {"left": 1}

        def out_of_memory(module: torch.nn.Module, args: object) -> None:
            if failures["left"]:
                failures["left"] -= 1
                raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

        hook = unet.register_forward_pre_hook(out_of_memory)
        try:
            retried = await client.call_tool("generate", {"prompt": "retried", **SMALL})
            assert not retried.is_error, retried.content
            assert any("out of memory" in w for w in retried.structured_content["warnings"])
            assert retried.structured_content["engine"]["memory_plan"] != "resident"
            failures["left"] = 10**6
            failed = await client.call_tool("generate", {"prompt": "never fits", **SMALL})
            assert failed.is_error
            assert "out of memory on cpu" in one_line(failed)
        finally:
            hook.remove()
        after = await client.call_tool("generate", {"prompt": "fits again", **SMALL})
        assert not after.is_error, after.content


async def test_a_full_disk_is_a_clear_error_and_loses_nothing(small_disk: Path, tiny_sd15: Path) -> None:
    settings = Settings(model=str(tiny_sd15), output_dir=small_disk / "out", device="cpu", hf_offline=True)
    async with Client(build_server(settings)) as client:
        first = await client.call_tool("generate", {"prompt": "fits", **SMALL})
        assert not first.is_error
        filler = fill(small_disk)
        pngs_before = sorted(p.name for p in (small_disk / "out").glob("*.png"))
        full = await client.call_tool("generate", {"prompt": "does not fit", **SMALL})
        assert full.is_error
        text = one_line(full)
        assert "No space left on device" in text and "IMGTOOLS_OUTPUT_DIR" in text
        # No half-written or orphaned files: the same PNGs, no temp files, every PNG has its sidecar.
        out = small_disk / "out"
        assert sorted(p.name for p in out.glob("*.png")) == pngs_before
        assert not list(out.glob(".*.tmp"))
        assert all(p.with_suffix(".json").is_file() for p in out.glob("*.png"))
        png = await client.read_resource(first.structured_content["images"][0]["uri"])
        assert Image.open(io.BytesIO(base64.b64decode(png.contents[0].blob))).size == (64, 64)
        filler.unlink()
        again = await client.call_tool("generate", {"prompt": "fits again", **SMALL})
        assert not again.is_error, again.content
