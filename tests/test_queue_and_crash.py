"""The server as an HTTP subprocess under pressure: a bounded FIFO queue, a burst of clients, and SIGKILL mid-job."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from pathlib import Path

import anyio
import pytest
from mcp import Client
from PIL import Image
from server_process import HttpServer, connect

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

SMALL = {"width": 64, "height": 64, "steps": 2}
LONG = {"width": 128, "height": 128, "steps": 150}  # minutes on a CPU: only ever cancelled or killed
REPO = Path(__file__).resolve().parents[1]


async def wait_for_queue(server: HttpServer, waiting: int) -> None:
    """Poll /health until `waiting` requests wait for the engine (the queue lives in the server process)."""
    with anyio.fail_after(60):
        while (await server.health())["queue"]["waiting"] != waiting:
            await anyio.sleep(0.02)


async def wait_for_progress(client: Client, job_id: str) -> None:
    with anyio.fail_after(120):
        while (await client.call_tool("get_job", {"job_id": job_id})).structured_content["progress"] < 1:
            await anyio.sleep(0.05)


@pytest.fixture
async def server(tiny_sd15: Path, tmp_path: Path):
    srv = await HttpServer(tiny_sd15, tmp_path / "out", tmp_path, IMGTOOLS_MAX_QUEUE="2").start()
    try:
        yield srv
    finally:
        srv.stop()


async def test_queue_is_a_bounded_fifo_and_a_cancelled_wait_leaves_it(server: HttpServer) -> None:
    finished: list[str] = []
    results: dict[str, object] = {}
    async with connect(server.url) as client:
        first_step = anyio.Event()

        async def progress(done: float, total: float | None, message: str | None) -> None:
            first_step.set()

        scopes = {name: anyio.CancelScope() for name in ("long", "a", "b", "c")}

        async def call(name: str, arguments: dict, **kwargs: object) -> None:
            with scopes[name]:
                results[name] = await client.call_tool("generate", {"prompt": name, **arguments}, **kwargs)
                finished.append(name)

        async with anyio.create_task_group() as tasks:
            tasks.start_soon(lambda: call("long", LONG, progress_callback=progress))
            with anyio.fail_after(120):
                await first_step.wait()
            tasks.start_soon(call, "a", SMALL)
            await wait_for_queue(server, 1)
            tasks.start_soon(call, "b", SMALL)
            await wait_for_queue(server, 2)

            # Full: a third request, foreground or background, is told so at once.
            for extra in ({}, {"background": True}):
                busy = await client.call_tool("generate", {"prompt": "one too many", **SMALL, **extra})
                assert busy.is_error, busy.content
                text = busy.content[0].text
                assert "engine busy" in text and "IMGTOOLS_MAX_QUEUE=2" in text and "\n" not in text

            # A waiting request that is cancelled leaves the queue.
            scopes["b"].cancel()
            await wait_for_queue(server, 1)

            # A background job takes a place like any request, and cancelling it while it waits gives the place back.
            job = await client.call_tool("generate", {"prompt": "job", **SMALL, "background": True})
            assert not job.is_error, job.content
            job_id = job.structured_content["job_id"]
            await wait_for_queue(server, 2)
            assert (await client.call_tool("get_job", {"job_id": job_id})).structured_content["state"] == "queued"
            cancelled = await client.call_tool("cancel_job", {"job_id": job_id})
            assert cancelled.structured_content["state"] == "cancelled"
            await wait_for_queue(server, 1)

            tasks.start_soon(call, "c", SMALL)
            await wait_for_queue(server, 2)
            scopes["long"].cancel()  # frees the device: the waiters run in arrival order
        assert finished == ["a", "c"]
        assert not results["a"].is_error and not results["c"].is_error
        assert (await server.health())["queue"] == {"waiting": 0, "running": False, "max_queue": 2}


async def test_small_load_run_loses_nothing_and_refuses_clearly(tiny_sd15: Path, tmp_path: Path) -> None:
    """benchmarks/load.py in small: 8 clients x 2 calls against a queue of 2 forces busy answers."""
    output = tmp_path / "out"
    report = tmp_path / "load.json"
    with anyio.fail_after(600):
        done = await anyio.run_process(
            [sys.executable, str(REPO / "benchmarks" / "load.py"), "--clients", "8", "--calls", "2", "--max-queue", "2",
             "--steps", "6", "--model", str(tiny_sd15), "--output-dir", str(output), "--json", str(report)],
            check=False,
        )
    assert done.returncode == 0, done.stdout.decode()[-3000:] + done.stderr.decode()[-3000:]
    summary = json.loads(report.read_text())
    calls = summary["per_call"]
    assert len(calls) == 16
    ok = [c for c in calls if c["outcome"] == "ok"]
    refused = [c for c in calls if c["outcome"] != "ok"]
    assert ok and refused, "a queue of 2 under 8 simultaneous clients must both serve and refuse"
    for call in refused:
        assert "engine busy" in call["text"] and "IMGTOOLS_MAX_QUEUE=2" in call["text"], call
    # Counted here, not from the script's summary: every success's image is on disk, and nothing else is.
    reported = {image_id for c in ok for image_id in c["image_ids"]}
    pngs = {p.stem for p in output.glob("*.png")}
    assert pngs == reported | set(summary["warm_up_image_ids"])
    for image_id in reported:
        assert Image.open(output / f"{image_id}.png").size == (64, 64)
        assert json.loads((output / f"{image_id}.json").read_text())["id"] == image_id
    assert not list(output.glob(".*.tmp"))
    assert summary["latency_ok_s"]["p50"] > 0


async def test_sigkill_mid_job_then_restart_reports_it_interrupted_and_keeps_outputs(tiny_sd15: Path, tmp_path: Path) -> None:
    server = await HttpServer(tiny_sd15, tmp_path / "out", tmp_path).start()
    try:
        async with connect(server.url) as client:
            before = await client.call_tool("generate", {"prompt": "made before the crash", **SMALL, "seed": 3})
            image = before.structured_content["images"][0]
            png_bytes = Path(image["path"]).read_bytes()
            job = await client.call_tool("generate", {"prompt": "cut short", **LONG, "background": True})
            job_id = job.structured_content["job_id"]
            await wait_for_progress(client, job_id)
        server.kill()
        await server.start()
        async with connect(server.url) as client:
            status = (await client.call_tool("get_job", {"job_id": job_id})).structured_content
            assert status["state"] == "interrupted", status
            assert "stopped while this job was running" in status["error"]
            png = await client.read_resource(image["uri"])
            assert base64.b64decode(png.contents[0].blob) == png_bytes
            meta = json.loads((await client.read_resource(image["metadata_uri"])).contents[0].text)
            assert meta["seed"] == 3 and meta["id"] == image["id"]
            after = await client.call_tool("generate", {"prompt": "after the restart", **SMALL})
            assert not after.is_error, after.content
    finally:
        server.stop()
