"""The contract every image-making tool keeps, one suite parametrised over generate, edit, inpaint, sweep and refine:
progress per denoising step, background jobs whose result matches the tool's output schema, cancellation that frees
the engine, bad input as a one-line error naming the parameter, and infotext in every PNG made."""

from __future__ import annotations

import base64
import io
import re
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import anyio
import jsonschema
import numpy as np
import pytest
from mcp import Client
from openai_loopback import OpenAILoopback
from PIL import Image
from pydantic import SecretStr

from imgtools_mcp.config import Settings
from imgtools_mcp.infotext import parse_infotext
from imgtools_mcp.server import build_server

pytestmark = pytest.mark.anyio

KEY = "contract-key"
STEPS = 2
LONG_STEPS = 150  # minutes on a CPU at 128 px: only ever cancelled


def data_url(seed: int = 0) -> str:
    pixels = np.random.default_rng(seed).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


IMAGE = data_url()
SHAPES = [{"type": "rect", "x": 0.25, "y": 0.25, "width": 0.5, "height": 0.5}]


@dataclass(frozen=True)
class Contract:
    """How to call one tool: its arguments (steps and size given), which PNGs it made, and its per-step messages."""

    tool: str
    arguments: Callable[[int, int], dict]  # (steps, size) -> arguments
    bad: tuple[dict, str]  # arguments that are wrong, and the parameter the error must name
    step_message: str  # the message of a denoising step, as a regular expression
    stoppable: bool = False  # winds down on cancel_job and keeps a result

    def made(self, result: dict) -> list[str]:
        if self.tool == "sweep":
            return [cell["image"]["path"] for cell in result["cells"] if cell["image"]] + [g["path"] for g in result["grids"]]
        if self.tool == "refine":
            return [candidate["path"] for r in result["rounds"] for candidate in r["candidates"]]
        return [image["path"] for image in result["images"]]


def small(steps: int, size: int) -> dict:
    return {"prompt": "a red cube", "steps": steps, "width": size, "height": size, "seed": 3}


CONTRACTS = [
    Contract("generate", small, ({"prompt": "x", "steps": 0}, "steps"), r"step \d+ / \d+"),
    Contract(
        "edit",
        lambda steps, size: {**small(steps, size), "image": IMAGE, "strength": 1.0},
        ({"prompt": "x", "image": IMAGE, "strength": 2}, "strength"),
        r"step \d+ / \d+",
    ),
    Contract(
        "inpaint",
        lambda steps, size: {**small(steps, size), "image": IMAGE, "mask_shapes": SHAPES},
        ({"prompt": "x", "image": IMAGE}, "mask"),
        r"step \d+ / \d+",
    ),
    Contract(
        "sweep",
        lambda steps, size: {"base": small(steps, size), "x": {"param": "seed", "values": [1, 2]}},
        ({"base": {"prompt": "x"}, "x": {"param": "colour", "values": [1]}}, "x.param"),
        r"cell \d / 2, step \d+ / \d+",
        stoppable=True,
    ),
    Contract(
        "refine",
        lambda steps, size: {**small(steps, size), "goal": "a red cube", "num_images": 1, "max_rounds": 2, "target_score": 10},
        ({"goal": "x", "max_rounds": 9}, "max_rounds"),
        r"round \d/2: step \d+ / \d+",
        stoppable=True,
    ),
]
IDS = [contract.tool for contract in CONTRACTS]


@pytest.fixture(scope="module")
def loopback() -> AsyncIterator[OpenAILoopback]:
    with OpenAILoopback(api_key=KEY) as server:
        yield server


@pytest.fixture
async def client(tmp_path: Path, tiny_sd15: Path, loopback: OpenAILoopback) -> AsyncIterator[Client]:
    settings = Settings(
        model=str(tiny_sd15), output_dir=tmp_path / "out", device="cpu", hf_offline=True,
        vlm_base_url=loopback.base_url, vlm_api_key=SecretStr(KEY),
    )
    async with Client(build_server(settings)) as connected:
        yield connected


async def output_schema(client: Client, tool: str) -> dict:
    return {t.name: t for t in (await client.list_tools()).tools}[tool].output_schema


def assert_infotext(path: str) -> None:
    prompt, _, fields = parse_infotext(Image.open(path).text["parameters"])
    assert prompt and "Version" in fields, fields
    assert "Steps" in fields or fields.get("Script") == "X/Y/Z plot", fields


@pytest.mark.parametrize("contract", CONTRACTS, ids=IDS)
async def test_progress_arrives_per_step_and_the_result_matches_the_schema(client: Client, contract: Contract) -> None:
    seen: list[tuple[float, float | None, str | None]] = []

    async def progress(done: float, total: float | None, message: str | None) -> None:
        seen.append((done, total, message))

    result = await client.call_tool(contract.tool, contract.arguments(STEPS, 64), progress_callback=progress)
    assert not result.is_error, result.content[0].text
    jsonschema.validate(result.structured_content, await output_schema(client, contract.tool))
    steps = [s[2] for s in seen if s[2] and re.fullmatch(contract.step_message, s[2])]
    assert steps, seen  # inpaint's strength 0.99 runs int(2 x 0.99) = 1 of 2 steps
    last, total = re.findall(r"step (\d+) / (\d+)", steps[-1])[0]
    assert last == total, steps  # every step of the last denoising call was reported
    assert all(b[0] >= a[0] for a, b in zip(seen, seen[1:])), seen  # one bar that never goes back
    assert all(total is not None and done <= total for done, total, _ in seen), seen
    made = contract.made(result.structured_content)
    assert made
    for path in made:
        assert_infotext(path)


@pytest.mark.parametrize("contract", CONTRACTS, ids=IDS)
async def test_background_returns_a_job_and_get_job_the_result(client: Client, contract: Contract) -> None:
    started = await client.call_tool(contract.tool, {**contract.arguments(STEPS, 64), "background": True})
    assert not started.is_error, started.content[0].text
    job_id = started.structured_content["job_id"]
    assert job_id and job_id in started.content[0].text
    jsonschema.validate(started.structured_content, await output_schema(client, contract.tool))
    with anyio.fail_after(120):
        done = (await client.call_tool("get_job", {"job_id": job_id, "wait_s": 60})).structured_content
    assert done["state"] == "done" and done["tool"] == contract.tool, done
    assert done["progress"] == done["total"], done
    jsonschema.validate(done["result"], await output_schema(client, contract.tool))
    for path in contract.made(done["result"]):
        assert Path(path).is_file()


@pytest.mark.parametrize("contract", CONTRACTS, ids=IDS)
async def test_cancel_job_stops_the_run_and_frees_the_engine(client: Client, contract: Contract) -> None:
    started = await client.call_tool(contract.tool, {**contract.arguments(LONG_STEPS, 128), "background": True})
    job_id = started.structured_content["job_id"]
    with anyio.fail_after(120):
        while True:  # get_job's long-poll paces this until the first denoising step
            status = (await client.call_tool("get_job", {"job_id": job_id, "wait_s": 0.2})).structured_content
            if status["progress"] >= 1:
                break
            assert status["state"] in ("queued", "running"), status
        cancelled = (await client.call_tool("cancel_job", {"job_id": job_id})).structured_content
    assert cancelled["state"] == "cancelled", cancelled
    assert cancelled["progress"] < (cancelled["total"] or LONG_STEPS)
    if contract.stoppable:  # what it had made is its result
        assert cancelled["result"]["state"] == "cancelled"
        jsonschema.validate(cancelled["result"], await output_schema(client, contract.tool))
    with anyio.fail_after(60):  # the engine is free again at once
        assert not (await client.call_tool("generate", small(STEPS, 64))).is_error


@pytest.mark.parametrize("contract", CONTRACTS, ids=IDS)
async def test_bad_input_is_one_line_naming_the_parameter(client: Client, contract: Contract) -> None:
    arguments, parameter = contract.bad
    for call in (arguments, {**arguments, "background": True}):
        result = await client.call_tool(contract.tool, call)
        assert result.is_error, result.content
        text = result.content[0].text
        assert parameter in text and "\n" not in text and "Traceback" not in text, text
