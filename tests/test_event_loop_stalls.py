"""The server never stalls: /health answers quickly over HTTP while the worst sweep inputs run in the same process."""

from __future__ import annotations

import time
from pathlib import Path

import anyio
import httpx
import pytest
from server_process import HttpServer, connect

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

SMALL = {"prompt": "a red cube", "width": 64, "height": 64, "steps": 2, "seed": 1}
HEALTH_LIMIT_S = 0.2
SAMPLE_EVERY_S = 0.05  # how often /health is sampled while the sweeps run (a measurement interval, not a wait)

WORST_SWEEPS = [
    # Huge single-word labels (column and row) and placeholder texts: wrapping used to measure them for minutes.
    {
        "base": SMALL,
        "x": {"param": "negative_prompt", "values": ["y" * 20_000, "z" * 3_000 + " w"]},
        "y": {"param": "prompt_sr", "values": ["cube", "q" * 20_000]},
    },
    # A range far past the cell limit: refused from the axes' lengths, before any list of cells is built.
    {"base": SMALL, "x": {"param": "seed", "start": 0, "stop": 2**53, "count": 1000}, "y": {"param": "steps", "start": 1, "stop": 150, "count": 1000}},
    # A count past the edge's bound: refused by validation.
    {"base": SMALL, "x": {"param": "seed", "start": 0, "stop": 9, "count": 10**9}},
]


async def test_health_stays_fast_while_the_worst_sweeps_run(tiny_sd15: Path, tmp_path: Path) -> None:
    server = await HttpServer(tiny_sd15, tmp_path / "out", tmp_path).start()
    try:
        results = []
        latencies: list[float] = []
        finished = anyio.Event()
        async with connect(server.url) as client, httpx.AsyncClient(base_url=server.base) as http:
            # The model is loaded and the connection open before timing starts: loading is not what is measured.
            assert not (await client.call_tool("generate", SMALL)).is_error
            await http.get("/health")

            async def run_sweeps() -> None:
                for arguments in WORST_SWEEPS:
                    results.append(await client.call_tool("sweep", arguments))
                finished.set()

            async with anyio.create_task_group() as group:
                group.start_soon(run_sweeps)
                with anyio.fail_after(240):
                    while not finished.is_set():
                        started = time.perf_counter()
                        assert (await http.get("/health")).status_code == 200
                        latencies.append(time.perf_counter() - started)
                        with anyio.move_on_after(SAMPLE_EVERY_S):
                            await finished.wait()
    finally:
        server.stop()
    labelled, too_many, unbounded = results
    assert not labelled.is_error, labelled.content[0].text
    cells = labelled.structured_content["cells"]
    assert [c["status"] for c in cells] == ["error", "done", "error", "error"]
    assert too_many.is_error and "IMGTOOLS_MAX_SWEEP_CELLS" in too_many.content[0].text
    assert unbounded.is_error and "x.count" in unbounded.content[0].text
    assert len(latencies) >= 3 and max(latencies) < HEALTH_LIMIT_S, sorted(latencies)[-5:]
