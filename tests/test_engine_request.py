"""The engine's request API: check() resolves and refuses once, generate() runs what it checked, the queue's tickets."""

from __future__ import annotations

import threading
from pathlib import Path

import anyio
import pytest
from PIL import Image

from imgtools_mcp.config import Settings
from imgtools_mcp.engine.engine import Engine
from imgtools_mcp.engine.errors import EngineBusyError, EngineError, InvalidRequestError
from imgtools_mcp.engine.queue import DeviceQueue
from imgtools_mcp.engine.request import EngineRequest, LoraWeight, ResolvedJob
from imgtools_mcp.engine.status import EngineStatusInfo

pytestmark = pytest.mark.anyio


@pytest.fixture(scope="module")
def engine(tiny_models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Engine:
    settings = Settings(
        model=str(tiny_models["sd15"]),
        output_dir=tmp_path_factory.mktemp("out"),
        device="cpu",
        hf_offline=True,
        backend="torch",
        max_pixels=128 * 128,
    )
    return Engine(settings)


def request(**changes: object) -> EngineRequest:
    return EngineRequest(**{"mode": "txt2img", "model": None, "prompt": "a red cube", **changes})


def test_check_fills_the_family_defaults_once(engine: Engine) -> None:
    job = engine.check(request(seeds=[7, 8]))
    assert isinstance(job, ResolvedJob)
    assert (job.width, job.height) == (job.family.native_size, job.family.native_size)
    assert job.steps == job.family.default_steps and job.guidance_scale == job.family.default_guidance
    assert job.source.spec == engine.settings.model and job.loras == []
    used = job.used()
    assert used["seed"] == 7 and used["num_images"] == 2 and used["model"] == engine.settings.model
    assert "strength" not in used
    explicit = engine.check(request(width=96, height=64, steps=3, guidance_scale=1.5))
    assert (explicit.width, explicit.height, explicit.steps, explicit.guidance_scale) == (96, 64, 3, 1.5)


IMAGE = Image.new("RGB", (64, 64), "gray")


@pytest.mark.parametrize(
    ("changes", "param", "fragment"),
    [
        ({"width": 65, "height": 64}, "width/height", "multiples of 8 (got 65x64)"),
        ({"width": 256, "height": 256}, "width/height", "256x256 = 65536 pixels exceeds IMGTOOLS_MAX_PIXELS=16384"),
        ({"mode": "img2img", "image": IMAGE, "strength": 0.1, "steps": 4}, "strength", "0.1 x 4 steps leaves no denoising step"),
        ({"mode": "img2img"}, "image", "needs an input image"),
        ({"mode": "inpaint", "image": IMAGE}, "mask", "needs a mask"),
        ({"mode": "instruct", "image": IMAGE}, "mode", "not available for SD 1.x"),
        ({"seeds": []}, "num_images", "at least one image"),
        ({"reference_images": [(IMAGE, 1.0)]}, "reference_images", "take no reference images"),
        ({"extra": {"warp": "fast"}}, "warp", "not supported"),
        ({"extra": {"speed": "ludicrous"}}, "speed", "must be one of quality, balanced, fast"),
        ({"loras": [LoraWeight("no-such-lora", 1.0)]}, "loras", "no-such-lora"),
        ({"model": "/no/such/model"}, "model", "/no/such/model"),
    ],
)
def test_check_refuses_with_the_parameter_named(engine: Engine, changes: dict, param: str, fragment: str) -> None:
    with pytest.raises(EngineError) as raised:
        engine.check(request(**changes))
    text = str(raised.value)
    assert text.startswith(param + ": ") and fragment in text, text
    assert "\n" not in text
    if isinstance(raised.value, InvalidRequestError):
        assert raised.value.param == param


def test_an_inpainting_checkpoint_is_refused_for_txt2img(engine: Engine, tiny_sd15_inpaint: Path) -> None:
    with pytest.raises(InvalidRequestError, match=r"^model: .* is an inpainting checkpoint") as raised:
        engine.check(request(model=str(tiny_sd15_inpaint)))
    assert raised.value.param == "model"
    assert engine.check(request(model=str(tiny_sd15_inpaint), mode="inpaint", image=IMAGE, mask=Image.new("L", (64, 64), 255)))


async def test_generate_runs_the_checked_job_without_resolving_again(engine: Engine) -> None:
    job = await engine.acheck(request(width=64, height=64, steps=2, seeds=[3]))

    def no_second_lookup(spec: str | None) -> None:
        raise AssertionError(f"generate resolved {spec!r} again")

    engine.resolve = no_second_lookup  # type: ignore[method-assign]
    try:
        steps: list[tuple[int, int]] = []
        out = await engine.generate(job, lambda step, total: steps.append((step, total)))
    finally:
        del engine.resolve
    assert [im.size for im in out.images] == [(64, 64)] and out.seeds == [3]
    assert steps == [(1, 2), (2, 2)] and out.steps_run == 2
    assert out.model.name == job.source.name and out.model.as_dict()["family"] == "sd1"
    engine_info = out.engine.as_dict()
    assert engine_info["backend"] == "torch" and engine_info["memory_plan"] == out.model.memory_plan
    assert out.timings["queue_s"] >= 0 and out.loras == []


# ----- the queue, with plain functions standing in for denoising -----


async def wait_until(condition) -> None:
    with anyio.fail_after(10):
        while not condition():
            await anyio.sleep(0.005)


class Blocker:
    """A run that holds the device until released (or cancelled), as a long denoising would."""

    def __init__(self) -> None:
        self.started = threading.Event()
        self.release = threading.Event()

    def __call__(self, cancel: threading.Event) -> str:
        self.started.set()
        while not (self.release.wait(0.01) or cancel.is_set()):
            pass
        return "done"


async def test_queue_is_fifo_refuses_when_full_and_a_ticket_holds_its_place() -> None:
    queue = DeviceQueue(max_queue=2, request_timeout_s=60)
    order: list[str] = []
    blocker = Blocker()

    async def run(name: str, ticket=None) -> None:
        await queue.run(name, lambda cancel: order.append(name), ticket=ticket)

    async with anyio.create_task_group() as tasks:
        tasks.start_soon(queue.run, "long", blocker)
        await wait_until(lambda: queue.busy)
        tasks.start_soon(run, "a")
        await wait_until(lambda: queue.waiting == 1)
        ticket = queue.admit()  # accepted background work counts as waiting before it runs
        assert queue.waiting == 2
        with pytest.raises(EngineBusyError, match=r"engine busy: 2 request\(s\) already waiting \(IMGTOOLS_MAX_QUEUE=2\)"):
            queue.admit()
        with pytest.raises(EngineBusyError):
            await queue.run("refused", lambda cancel: None)
        # The ticket's first run takes its place over instead of waiting on top of it, and is never refused.
        tasks.start_soon(run, "ticket-1", ticket)
        await wait_until(lambda: not ticket.counted)
        assert queue.waiting == 2
        blocker.release.set()
    assert order == ["a", "ticket-1"]
    assert queue.waiting == 0 and not queue.busy
    # Later runs on the same ticket are admitted even when the queue is full again; releasing twice is harmless.
    await queue.run("ticket-2", lambda cancel: order.append("ticket-2"), ticket=ticket)
    ticket.release()
    assert queue.waiting == 0 and order[-1] == "ticket-2"


async def test_a_ticket_released_before_running_gives_its_place_back() -> None:
    queue = DeviceQueue(max_queue=1, request_timeout_s=60)
    with queue.admit() as ticket:
        assert queue.waiting == 1 and ticket.counted
    assert queue.waiting == 0
    other = DeviceQueue(max_queue=1, request_timeout_s=60)
    with pytest.raises(ValueError, match="ticket: taken from another engine's queue"):
        await other.run("x", lambda cancel: None, ticket=queue.admit())


async def test_a_cancelled_wait_leaves_the_queue() -> None:
    queue = DeviceQueue(max_queue=4, request_timeout_s=60)
    blocker = Blocker()
    async with anyio.create_task_group() as tasks:
        tasks.start_soon(queue.run, "long", blocker)
        await wait_until(lambda: queue.busy)
        scope = anyio.CancelScope()

        async def wait_then_cancelled() -> None:
            with scope:
                await queue.run("waiter", lambda cancel: None)

        tasks.start_soon(wait_then_cancelled)
        await wait_until(lambda: queue.waiting == 1)
        scope.cancel()
        await wait_until(lambda: queue.waiting == 0)
        blocker.release.set()
    assert not queue.busy


async def test_a_run_over_its_time_limit_is_stopped_and_frees_the_device() -> None:
    queue = DeviceQueue(max_queue=4, request_timeout_s=0.3)
    blocker = Blocker()
    with pytest.raises(EngineError, match=r"timed out after 0.3 s \(IMGTOOLS_REQUEST_TIMEOUT_S\)"):
        await queue.run("long", blocker)
    assert blocker.started.is_set() and not queue.busy and queue.waiting == 0
    assert (await queue.run("after", lambda cancel: "ok"))[0] == "ok"


async def test_status_is_a_dataclass_with_engine_statuss_shape(engine: Engine) -> None:
    job = await engine.acheck(request(width=64, height=64, steps=1))
    await engine.generate(job)
    status = engine.status()
    assert isinstance(status, EngineStatusInfo)
    (loaded,) = status.loaded_models
    assert loaded.model.name == job.source.name and loaded.memory_bytes >= loaded.model.weights_bytes
    assert status.default_model_plan is None and status.queue_length == 0 and status.running is None
    assert status.cache.used_bytes == engine.cache.used_bytes() and status.replicas == []
    shown = status.as_dict()
    assert shown["loaded_models"][0]["name"] == job.source.name and shown["cache"]["budget_reason"]
    assert set(shown["backends"]) == {"torch", "openvino"}
