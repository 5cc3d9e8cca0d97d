"""IMGTOOLS_ENGINE=ray through the MCP client: a local Ray instance with two CPU ImageEngine replicas of tiny models.

Ray starts once for the module (two logical CPUs, one per replica; Serve's controller and the replica
board take none; no dashboard, no HTTP proxy).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import anyio
import numpy as np
import pytest
from mcp import Client
from PIL import Image

from imgtools_mcp.config import Settings
from imgtools_mcp.server import build_server

ray = pytest.importorskip("ray")
serve = pytest.importorskip("ray.serve")

pytestmark = pytest.mark.anyio

APP = "imgtools-test"
SMALL = {"width": 64, "height": 64, "steps": 2}
LONG = {"width": 128, "height": 128, "steps": 150}  # a minute or more on a CPU replica: only ever cancelled or killed
MAX_QUEUE = 2


@pytest.fixture(scope="module")
def ray_replicas(tiny_models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory):
    """Two ImageEngine replicas (1 logical CPU and 1 torch thread each), each keeping one model."""
    from imgtools_mcp.engine.ray_deployment import DeploymentSize, deploy

    started = time.perf_counter()
    patch = pytest.MonkeyPatch()
    patch.setenv("RAY_USAGE_STATS_ENABLED", "0")  # tests never use the network; Ray would report usage
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, namespace="imgtools-tests")
    settings = Settings(
        model=str(tiny_models["sd15"]), output_dir=tmp_path_factory.mktemp("replica-out"), device="cpu", hf_offline=True
    )
    size = DeploymentSize(replicas=2, num_cpus=1, models_per_replica=1, torch_threads=1, max_queued_requests=MAX_QUEUE)
    deploy(settings, size, app_name=APP)
    print(f"\nRay + 2 replicas ready in {time.perf_counter() - started:.1f} s")
    try:
        yield tiny_models
    finally:
        serve.shutdown()
        ray.shutdown()
        patch.undo()


def ray_settings(tmp_path: Path, model: Path) -> Settings:
    return Settings(
        model=str(model), output_dir=tmp_path / "out", device="cpu", hf_offline=True,
        engine="ray", ray_app=APP, max_queue=MAX_QUEUE,
    )


def local_settings(tmp_path: Path, model: Path) -> Settings:
    return Settings(model=str(model), output_dir=tmp_path / "local-out", device="cpu", hf_offline=True)


def pixels(result, index: int = 0) -> np.ndarray:
    assert not result.is_error, result.content
    return np.asarray(Image.open(result.structured_content["images"][index]["path"]).convert("RGB"))


async def engine_replicas(client: Client) -> list[dict]:
    status = await client.call_tool("engine_status", {})
    assert not status.is_error, status.content
    return status.structured_content["replicas"]


async def wait_until(client: Client, condition, timeout: float = 60) -> list[dict]:
    """Poll engine_status until `condition(replicas)` holds (replicas report every 2 s and on every change)."""
    with anyio.fail_after(timeout):
        while True:
            replicas = await engine_replicas(client)
            if condition(replicas):
                return replicas
            await anyio.sleep(0.1)


def live(replicas: list[dict]) -> list[dict]:
    return [r for r in replicas if r["state"] == "running"]


async def test_generate_edit_sweep_give_the_local_engines_pixels(ray_replicas, tmp_path: Path) -> None:
    import torch

    model = ray_replicas["sd15"]
    calls = [
        ("generate", {"prompt": "a red cube", **SMALL, "seed": 7, "num_images": 2}),
        ("sweep", {"base": {"prompt": "a blue ball", **SMALL, "seed": 3}, "x": {"param": "steps", "values": [1, 2]}}),
    ]
    results: dict[str, dict] = {}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the replicas run on one torch thread; same arithmetic order, same floats
    try:
        for name, settings in (("ray", ray_settings(tmp_path, model)), ("local", local_settings(tmp_path, model))):
            async with Client(build_server(settings)) as client:
                made = {tool: await client.call_tool(tool, args) for tool, args in calls}
                first = made["generate"].structured_content["images"][0]
                made["edit"] = await client.call_tool(
                    "edit", {"prompt": "the same cube, green", "image": first["uri"], "strength": 0.5, "seed": 11, "steps": 4}
                )
                meta = await client.read_resource(first["metadata_uri"])
                made["meta"] = meta
            results[name] = made
    finally:
        torch.set_num_threads(threads)
    ray_run, local_run = results["ray"], results["local"]
    for tool in ("generate", "edit"):
        count = len(local_run[tool].structured_content["images"])
        assert len(ray_run[tool].structured_content["images"]) == count
        for index in range(count):
            assert np.array_equal(pixels(ray_run[tool], index), pixels(local_run[tool], index)), tool
    ray_cells = ray_run["sweep"].structured_content["cells"]
    local_cells = local_run["sweep"].structured_content["cells"]
    assert len(ray_cells) == len(local_cells) == 2
    for ray_cell, local_cell in zip(ray_cells, local_cells, strict=True):
        assert np.array_equal(
            np.asarray(Image.open(ray_cell["image"]["path"]).convert("RGB")),
            np.asarray(Image.open(local_cell["image"]["path"]).convert("RGB")),
        )
    # The front saved them: ids, infotext and sidecars exactly as the local engine writes them.
    generated = ray_run["generate"].structured_content
    png = Image.open(generated["images"][0]["path"])
    assert "Seed: 7" in png.info["parameters"] and "Steps: 2" in png.info["parameters"]
    assert generated["parameters"] == local_run["generate"].structured_content["parameters"] | {
        "model": generated["parameters"]["model"]
    }
    assert '"seed": 7' in ray_run["meta"].contents[0].text
    assert generated["timings"]["ray_overhead_s"] >= 0
    assert any("Ray Serve replica" in note for note in generated["engine"].get("backend_notes", []))


async def test_two_models_are_routed_to_two_replicas(ray_replicas, tmp_path: Path) -> None:
    sd15, sdxl = ray_replicas["sd15"], ray_replicas["sdxl"]
    async with Client(build_server(ray_settings(tmp_path, sd15))) as client:
        replicas = await wait_until(client, lambda rs: len(live(rs)) == 2)
        assert {r["device"] for r in replicas} == {"cpu"}
        first = await client.call_tool("generate", {"prompt": "a", **SMALL, "seed": 1})
        assert not first.is_error, first.content
        await wait_until(client, lambda rs: any(str(sd15) in r["models"] for r in live(rs)))
        second = await client.call_tool("generate", {"prompt": "b", **SMALL, "seed": 1, "model": str(sdxl)})
        assert not second.is_error, second.content
        replicas = await wait_until(client, lambda rs: sum(bool(r["models"]) for r in live(rs)) == 2)
        holders = {m: [r["replica"] for r in live(replicas) if m in r["models"]] for m in (str(sd15), str(sdxl))}
        assert len(holders[str(sd15)]) == 1 and len(holders[str(sdxl)]) == 1
        assert holders[str(sd15)] != holders[str(sdxl)], holders
        # A request for a model goes where that model already is.
        again = await client.call_tool("generate", {"prompt": "c", **SMALL, "seed": 2, "model": str(sdxl)})
        assert not again.is_error
        assert holders[str(sdxl)][0] in " ".join(again.structured_content["engine"]["backend_notes"])
        status = await client.call_tool("engine_status", {})
        text = status.content[0].text
        assert "ray: 2 replica(s)" in text
        loaded = {m["name"] for m in status.structured_content["loaded_models"]}
        assert {"tiny-sd15", "tiny-sdxl"} <= loaded


async def test_progress_streams_and_cancel_frees_the_replica(ray_replicas, tmp_path: Path) -> None:
    async with Client(build_server(ray_settings(tmp_path, ray_replicas["sd15"]))) as client:
        seen: list[tuple[float, float | None, str | None]] = []

        async def progress(done: float, total: float | None, message: str | None) -> None:
            seen.append((done, total, message))

        result = await client.call_tool("generate", {"prompt": "p", **SMALL, "steps": 5, "seed": 4}, progress_callback=progress)
        assert not result.is_error, result.content
        steps = [s for s in seen if s[2] and "step" in s[2]]
        assert [s[0] for s in steps][-5:] == [1, 2, 3, 4, 5] and steps[-1][2].endswith("step 5 / 5")

        first_step = anyio.Event()
        long_steps: list[float] = []

        async def long_progress(done: float, total: float | None, message: str | None) -> None:
            long_steps.append(done)
            first_step.set()

        async with anyio.create_task_group() as tg:
            async def long_call() -> None:
                await client.call_tool("generate", {"prompt": "long", **LONG}, progress_callback=long_progress)

            tg.start_soon(long_call)
            with anyio.fail_after(60):
                await first_step.wait()
            tg.cancel_scope.cancel()
        # The replica stops at its next step: nothing is running anywhere within a few seconds.
        # Replicas push their status on each change, so a snapshot taken between "run ended" and "queue emptied" may
        # still count the run that was stopping: wait for both.
        replicas = await wait_until(
            client, lambda rs: len(live(rs)) == 2 and not any(r["running"] or r["waiting"] for r in rs), timeout=20
        )
        assert all(r["waiting"] == 0 for r in replicas)
        assert len(long_steps) < LONG["steps"]
        with anyio.fail_after(60):
            after = await client.call_tool("generate", {"prompt": "after", **SMALL, "seed": 5})
        assert not after.is_error

        # A background job takes its place on the front, runs on a replica and is saved by the front.
        started = await client.call_tool("generate", {"prompt": "bg", **SMALL, "seed": 6, "background": True})
        job_id = started.structured_content["job_id"]
        with anyio.fail_after(60):
            job = (await client.call_tool("get_job", {"job_id": job_id, "wait_s": 60})).structured_content
        assert job["state"] == "done", job
        assert Path(job["result"]["images"][0]["path"]).is_file()


async def test_full_queue_is_busy(ray_replicas, tmp_path: Path) -> None:
    async with Client(build_server(ray_settings(tmp_path, ray_replicas["sd15"]))) as client:
        await wait_until(client, lambda rs: len(live(rs)) == 2 and not any(r["running"] for r in rs))

        async def call(i: int) -> None:
            await client.call_tool("generate", {"prompt": f"q{i}", **LONG})

        async with anyio.create_task_group() as tg:
            # One runs on each replica, then MAX_QUEUE wait at Ray's router; the next is refused at once.
            for running in (1, 2):
                tg.start_soon(call, running)
                await wait_until(client, lambda rs: sum(bool(r["running"]) for r in live(rs)) == running)
            for waiting in range(1, MAX_QUEUE + 1):
                tg.start_soon(call, 2 + waiting)
                with anyio.fail_after(30):
                    while (await client.call_tool("engine_status", {})).structured_content["queue_length"] != waiting:
                        await anyio.sleep(0.05)
            for extra in ({}, {"background": True}):
                busy = await client.call_tool("generate", {"prompt": "one too many", **SMALL, **extra})
                assert busy.is_error, busy.content
                text = busy.content[0].text
                assert "engine busy" in text and "\n" not in text, text
                assert (f"max_queued_requests={MAX_QUEUE}" if not extra else f"IMGTOOLS_MAX_QUEUE={MAX_QUEUE}") in text
            tg.cancel_scope.cancel()
        await wait_until(client, lambda rs: not any(r["running"] for r in live(rs)), timeout=20)


async def test_a_killed_replica_fails_its_request_clearly_and_is_replaced(ray_replicas, tmp_path: Path) -> None:
    async with Client(build_server(ray_settings(tmp_path, ray_replicas["sd15"]))) as client:
        saved = await client.call_tool("generate", {"prompt": "kept", **SMALL, "seed": 8})
        kept = Path(saved.structured_content["images"][0]["path"])
        first_step = anyio.Event()

        async def progress(done: float, total: float | None, message: str | None) -> None:
            first_step.set()

        outcome: list = []
        async with anyio.create_task_group() as tg:
            async def long_call() -> None:
                outcome.append(await client.call_tool("generate", {"prompt": "doomed", **LONG}, progress_callback=progress))

            tg.start_soon(long_call)
            with anyio.fail_after(60):
                await first_step.wait()
            running = [r for r in live(await engine_replicas(client)) if r["running"]]
            if not running:  # the board may not have heard yet; it reports on every change
                running = await wait_until(client, lambda rs: any(r["running"] for r in live(rs)))
                running = [r for r in live(running) if r["running"]]
            victim = running[0]
            os.kill(victim["pid"], signal.SIGKILL)
        (failed,) = outcome
        assert failed.is_error
        text = failed.content[0].text
        assert "stopped during the request" in text and victim["replica"] in text and "\n" not in text
        # The front keeps serving, what was saved is still there, and Ray brings a new replica up.
        assert kept.is_file()
        with anyio.fail_after(60):
            after = await client.call_tool("generate", {"prompt": "after", **SMALL, "seed": 9})
        assert not after.is_error, after.content
        await wait_until(
            client, lambda rs: len(live(rs)) == 2 and victim["replica"] not in {r["replica"] for r in live(rs)}, timeout=60
        )


FRONT = """
import asyncio, sys
import ray
from imgtools_mcp.config import Settings
from imgtools_mcp.engine.ray_engine import RayEngine
from imgtools_mcp.engine.request import EngineRequest

ray.init(address=sys.argv[1], log_to_driver=False)
engine = RayEngine(Settings(model=sys.argv[2], device="cpu", hf_offline=True, engine="ray", ray_app=sys.argv[3]))

def on_step(step, total):
    print("step", step, flush=True)

async def main():
    job = await engine.acheck(EngineRequest(mode="txt2img", model=None, prompt="orphan", width=128, height=128, steps=150))
    await engine.generate(job, on_step)

asyncio.run(main())
"""


async def test_a_front_that_dies_frees_its_replica(ray_replicas, tmp_path: Path) -> None:
    model = ray_replicas["sd15"]
    front = subprocess.Popen(
        [sys.executable, "-c", FRONT, ray.get_runtime_context().gcs_address, str(model), APP],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )
    try:
        with anyio.fail_after(120):
            line = await anyio.to_thread.run_sync(front.stdout.readline)
        assert line.startswith("step"), line
        async with Client(build_server(ray_settings(tmp_path, model))) as client:
            # The replica's status reaches the board a moment after its first step: wait for it rather than race it.
            await wait_until(client, lambda rs: any(r["running"] for r in live(rs)), timeout=30)
            front.kill()
            # Serve would let an orphaned stream run to its end; the replica sees the front's lease gone.
            await wait_until(client, lambda rs: not any(r["running"] for r in live(rs)), timeout=30)
    finally:
        front.kill()
        front.wait()


def test_ray_engine_without_ray_is_one_line_at_start(tmp_path: Path) -> None:
    blocked = (
        "import sys; sys.modules['ray'] = None; sys.modules['ray.serve'] = None\n"
        "from imgtools_mcp.cli import main; sys.exit(main(['serve']))"
    )
    env = {**os.environ, "IMGTOOLS_ENGINE": "ray", "IMGTOOLS_OUTPUT_DIR": str(tmp_path)}
    done = subprocess.run([sys.executable, "-c", blocked], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert lines == ["imgtools-mcp: IMGTOOLS_ENGINE=ray needs Ray Serve, which is not installed: pip install 'imgtools-mcp[ray]'"]
