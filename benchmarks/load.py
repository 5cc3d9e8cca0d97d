"""Load run: many concurrent MCP clients calling `generate` over Streamable HTTP against the server as a subprocess.

Every call must either succeed or get the queue's clear "busy" tool error, and the PNGs on disk must be exactly
the images the successful calls reported. Latencies (p50/p95/max) are written as JSON and a Markdown table.

    python benchmarks/load.py                       # 32 clients x 2 calls, tiny random-weight model
    python benchmarks/load.py --clients 8 --max-queue 2 --json /tmp/load.json
"""

from __future__ import annotations

import argparse
import json
import math
import os
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import anyio
import httpx
from mcp import Client

BUSY_MARK = "engine busy"


@dataclass
class Call:
    client: int
    call: int
    outcome: str  # ok | busy | error
    latency_s: float
    image_ids: list[str] = field(default_factory=list)
    text: str = ""


def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..100); None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def wait_healthy(base: str, proc: subprocess.Popen[bytes], timeout: float) -> None:
    with anyio.fail_after(timeout):
        async with httpx.AsyncClient() as http:
            while True:
                if proc.poll() is not None:
                    raise RuntimeError(f"server exited with {proc.returncode}; see its log")
                try:
                    if (await http.get(f"{base}/health")).status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                await anyio.sleep(0.1)


async def one_client(index: int, url: str, calls: int, arguments: dict[str, Any], go: anyio.Event, ready: list[int], out: list[Call]) -> None:
    async with Client(url) as client:
        ready.append(index)
        await go.wait()
        for number in range(calls):
            started = time.perf_counter()
            try:
                result = await client.call_tool("generate", {**arguments, "prompt": f"load client {index} call {number}"})
            except Exception as exc:  # a transport failure is a lost call: it is counted, never hidden
                out.append(Call(index, number, "error", time.perf_counter() - started, text=f"{type(exc).__name__}: {exc}"))
                continue
            latency = time.perf_counter() - started
            text = result.content[0].text if result.content else ""
            if not result.is_error:
                ids = [image["id"] for image in result.structured_content["images"]]
                out.append(Call(index, number, "ok", latency, ids, text))
            else:
                out.append(Call(index, number, "busy" if BUSY_MARK in text else "error", latency, text=text))


async def run_load(args: argparse.Namespace) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="imgtools-load-"))
    output = Path(args.output_dir) if args.output_dir else work / "out"
    model = args.model
    if model is None:
        from imgtools_mcp.testing import make_test_model

        model = str(make_test_model(work / "tiny-sd15", "sd15"))
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    # Settings stay the script's, except where compiled backend models go: that is the caller's (the test suite's
    # throwaway folder, say), and it changes nothing that is measured once the warm-up call has run.
    env = {k: v for k, v in os.environ.items() if not k.startswith("IMGTOOLS_") or k == "IMGTOOLS_CACHE_DIR"}
    env.update(
        IMGTOOLS_MODEL=model,
        IMGTOOLS_OUTPUT_DIR=str(output),
        IMGTOOLS_DEVICE=args.device,
        IMGTOOLS_MAX_QUEUE=str(args.max_queue),
        HF_HUB_OFFLINE="1",
        TOKENIZERS_PARALLELISM="false",
    )
    if args.backend:
        env["IMGTOOLS_BACKEND"] = args.backend
    log_path = work / "server.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "imgtools_mcp.cli", "serve", "--transport", "http", "--port", str(port)],
            env=env, stdout=subprocess.DEVNULL, stderr=log,
        )
    try:
        await wait_healthy(base, proc, timeout=180)
        arguments = {"width": args.size, "height": args.size, "steps": args.steps, "seed": 1}
        # One call before the clock starts: model load (and any backend compile) is not what this measures.
        async with Client(f"{base}/mcp") as warm:
            warmed = await warm.call_tool("generate", {**arguments, "prompt": "warm-up"})
            if warmed.is_error:
                raise RuntimeError(f"warm-up failed: {warmed.content[0].text}")
            engine = warmed.structured_content["engine"]
            warm_ids = [image["id"] for image in warmed.structured_content["images"]]
        calls: list[Call] = []
        ready: list[int] = []
        go = anyio.Event()
        with anyio.fail_after(args.timeout):
            async with anyio.create_task_group() as tasks:
                for index in range(args.clients):
                    tasks.start_soon(one_client, index, f"{base}/mcp", args.calls, arguments, go, ready, calls)
                while len(ready) < args.clients:  # every session open before the first call: a real burst
                    await anyio.sleep(0.01)
                started = time.perf_counter()
                go.set()
            wall = time.perf_counter() - started
        async with httpx.AsyncClient() as http:
            health = (await http.get(f"{base}/health")).json()
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()

    ok = [c for c in calls if c.outcome == "ok"]
    busy = [c for c in calls if c.outcome == "busy"]
    errors = [c for c in calls if c.outcome == "error"]
    reported = {image_id for c in ok for image_id in c.image_ids}
    on_disk = {p.stem for p in output.glob("*.png")} - set(warm_ids)
    sidecars = {p.stem for p in output.glob("*.json")} - set(warm_ids)
    summary = {
        "clients": args.clients,
        "calls_per_client": args.calls,
        "max_queue": args.max_queue,
        "request": arguments,
        "engine": {k: engine.get(k) for k in ("device", "dtype", "backend", "memory_plan")},
        "cpu_count": os.cpu_count(),
        "calls": len(calls),
        "ok": len(ok),
        "busy": len(busy),
        "errors": len(errors),
        "images_reported": len(reported),
        "images_on_disk": len(on_disk),
        "sidecars_on_disk": len(sidecars),
        "warm_up_image_ids": warm_ids,
        "missing_on_disk": sorted(reported - on_disk),
        "unreported_on_disk": sorted(on_disk - reported),
        "wall_s": round(wall, 3),
        "throughput_images_per_s": round(len(ok) / wall, 3) if wall else None,
        "latency_ok_s": {name: _round(percentile([c.latency_s for c in ok], q)) for name, q in (("p50", 50), ("p95", 95), ("max", 100))},
        "latency_busy_s": {name: _round(percentile([c.latency_s for c in busy], q)) for name, q in (("p50", 50), ("p95", 95), ("max", 100))},
        "queue_after": health.get("queue"),
        "error_texts": sorted({c.text for c in errors})[:10],
        "busy_text": busy[0].text if busy else None,
        "passed": not errors and reported == on_disk == sidecars and len(calls) == args.clients * args.calls,
        "server_log": str(log_path),
        "output_dir": str(output),
        "per_call": [asdict(c) for c in sorted(calls, key=lambda c: (c.client, c.call))],
    }
    return summary


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def table(summary: dict[str, Any]) -> str:
    lat, busy = summary["latency_ok_s"], summary["latency_busy_s"]
    rows = [
        ("clients x calls", f"{summary['clients']} x {summary['calls_per_client']}"),
        ("IMGTOOLS_MAX_QUEUE", summary["max_queue"]),
        ("request", f"{summary['request']['width']}x{summary['request']['height']}, {summary['request']['steps']} steps"),
        ("engine", ", ".join(f"{k}={v}" for k, v in summary["engine"].items())),
        ("succeeded / busy / other errors", f"{summary['ok']} / {summary['busy']} / {summary['errors']}"),
        ("images reported / PNGs on disk / sidecars", f"{summary['images_reported']} / {summary['images_on_disk']} / {summary['sidecars_on_disk']}"),
        ("latency of successes p50 / p95 / max (s)", f"{lat['p50']} / {lat['p95']} / {lat['max']}"),
        ("latency of busy answers p50 / p95 / max (s)", f"{busy['p50']} / {busy['p95']} / {busy['max']}"),
        ("wall time (s) / images per s", f"{summary['wall_s']} / {summary['throughput_images_per_s']}"),
        ("invariants hold", summary["passed"]),
    ]
    lines = ["| measure | value |", "|---|---|", *[f"| {name} | {value} |" for name, value in rows]]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--calls", type=int, default=2, help="generate calls per client, one after another")
    parser.add_argument("--max-queue", type=int, default=16)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--model", help="model for the server (default: a tiny random-weight SD 1.x made here)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--backend", help="IMGTOOLS_BACKEND for the server (default: the server's auto choice)")
    parser.add_argument("--output-dir", help="the server's output folder (default: a new temporary one)")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds for the whole burst")
    parser.add_argument("--json", default=str(Path(__file__).parent / "results" / "load.json"))
    parser.add_argument("--table", help="also write the Markdown table here")
    args = parser.parse_args(argv)
    summary = anyio.run(run_load, args)
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(summary, indent=2))
    text = table(summary)
    if args.table:
        Path(args.table).write_text(text + "\n")
    print(text)
    print(f"details: {args.json}")
    return 0 if summary["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
