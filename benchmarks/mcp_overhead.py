"""What the MCP layer costs: one `generate` call in-process and over stdio against the direct diffusers pipeline call.

The same request each way: the tiny random-weight SD 1.5 test pipeline (built locally, nothing downloaded)
at 256x256 with 30 Euler steps and guidance, so one call lasts seconds and a few milliseconds of
overhead are measurable. The direct call is `pipeline(...)` with the same dtype, sampler, seed and size,
returning PIL images. The MCP call additionally writes the PNG with infotext and the JSON sidecar,
makes the thumbnail, and goes through JSON-RPC (and a pipe, for stdio): that is the overhead measured.
Both servers run the torch backend, like the direct call.

Each way is warmed up once (model load excluded), then they run turn by turn; medians are reported.

    .venv/bin/python benchmarks/mcp_overhead.py [--rounds 5] [--steps 30] [--size 256]

Writes benchmarks/results/mcp_overhead.json and .md.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import anyio
from common import log, save_results


async def run(args: argparse.Namespace, work: Path) -> dict:
    import torch
    from diffusers import AutoPipelineForText2Image
    from mcp import Client, StdioServerParameters

    from imgtools_mcp.config import Settings
    from imgtools_mcp.engine.choice import choose_dtype
    from imgtools_mcp.engine.device import probe
    from imgtools_mcp.testing import make_test_model
    from imgtools_mcp.server import build_server

    model = make_test_model(work / "tiny-sd15", "sd15")
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[choose_dtype(probe("cpu")).value]
    request = {
        "prompt": "a lighthouse on a cliff at dusk", "width": args.size, "height": args.size, "steps": args.steps,
        "guidance_scale": 7.0, "sampler": "euler", "seed": 1234,
    }  # fmt: skip

    pipe = AutoPipelineForText2Image.from_pretrained(str(model), torch_dtype=dtype)
    pipe.set_progress_bar_config(disable=True)
    from diffusers import EulerDiscreteScheduler

    pipe.scheduler = EulerDiscreteScheduler.from_config(pipe.scheduler.config)

    def direct() -> float:
        started = time.perf_counter()
        with torch.inference_mode():
            pipe(
                prompt=request["prompt"], width=args.size, height=args.size, num_inference_steps=args.steps,
                guidance_scale=7.0, generator=[torch.Generator("cpu").manual_seed(1234)], output_type="pil",
            )  # fmt: skip
        return time.perf_counter() - started

    settings = Settings(model=str(model), output_dir=work / "out", device="cpu", backend="torch", hf_offline=True,
                        cache_dir=work / "cache")  # fmt: skip
    env = {k: v for k, v in os.environ.items() if not k.startswith("IMGTOOLS_")}
    env.update(IMGTOOLS_MODEL=str(model), IMGTOOLS_OUTPUT_DIR=str(work / "out-stdio"), IMGTOOLS_DEVICE="cpu",
               IMGTOOLS_BACKEND="torch", IMGTOOLS_CACHE_DIR=str(work / "cache"), HF_HUB_OFFLINE="1")  # fmt: skip
    stdio = StdioServerParameters(command=sys.executable, args=["-m", "imgtools_mcp.cli", "serve"], env=env)

    async def call(client: Client, server_timings: list[dict]) -> float:
        started = time.perf_counter()
        result = await client.call_tool("generate", request)
        elapsed = time.perf_counter() - started
        assert not result.is_error, result.content[0].text
        server_timings.append(result.structured_content["timings"])
        return elapsed

    times: dict[str, list[float]] = {"direct pipeline call": [], "MCP in-process": [], "MCP stdio": []}
    server: dict[str, list[dict]] = {"MCP in-process": [], "MCP stdio": []}
    async with Client(build_server(settings)) as inproc, Client(stdio) as piped:
        log("warm-up (loads the model in each)")
        direct()
        await call(inproc, [])
        await call(piped, [])
        for r in range(args.rounds):
            times["direct pipeline call"].append(await anyio.to_thread.run_sync(direct))
            times["MCP in-process"].append(await call(inproc, server["MCP in-process"]))
            times["MCP stdio"].append(await call(piped, server["MCP stdio"]))
            log(f"round {r + 1}/{args.rounds}: " + ", ".join(f"{k} {v[-1]:.3f} s" for k, v in times.items()))
    medians = {k: statistics.median(v) for k, v in times.items()}
    base = medians["direct pipeline call"]
    return {
        "request": request,
        "model": "tiny random-weight SD 1.5 test pipeline (imgtools_mcp.testing.tiny_sd)",
        "dtype": str(dtype),
        "rounds": args.rounds,
        "times_s": times,
        "median_s": medians,
        "overhead_pct": {k: 100 * (v - base) / base for k, v in medians.items() if k != "direct pipeline call"},
        # Per call: the client's wall time less the server's own pipeline time; unaffected by how fast that call's
        # denoising happened to run, so it resolves milliseconds where the side-by-side medians cannot.
        "outside_pipeline_s": {
            way: statistics.median(t - row["generate_s"] for t, row in zip(times[way], rows)) for way, rows in server.items()
        },
        "server_timings_median": {
            way: {key: statistics.median(t[key] for t in rows) for key in rows[0] if isinstance(rows[0][key], (int, float))}
            for way, rows in server.items()
        },
    }


def table(report: dict) -> str:
    r = report["request"]
    lines = [
        "# MCP overhead: `generate` through MCP vs the direct pipeline call",
        "",
        f"Request: {report['model']}, {r['width']}x{r['height']}, {r['steps']} {r['sampler']} steps, guidance "
        f"{r['guidance_scale']}, {report['dtype']}, torch backend; medians of {report['rounds']} interleaved rounds.",
        "",
        "| way | median s | overhead vs direct |",
        "|---|---:|---:|",
    ]
    for way, median in report["median_s"].items():
        overhead = report["overhead_pct"].get(way)
        lines.append(f"| {way} | {median:.3f} | {'—' if overhead is None else f'{overhead:+.1f}%'} |")
    base = report["median_s"]["direct pipeline call"]
    lines += ["", "Time each MCP call spends outside the pipeline (client wall time − server generate_s, median per call):", ""]
    for way, seconds in report["outside_pipeline_s"].items():
        lines.append(f"- {way}: {seconds * 1000:.1f} ms = {100 * seconds / base:.2f}% of the direct call")
    lines += ["", "Server-side timings (medians) of the MCP calls:", ""]
    for way, timings in report["server_timings_median"].items():
        lines.append(f"- {way}: " + ", ".join(f"{k} {v:.3f} s" for k, v in timings.items()))
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--size", type=int, default=256)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    work = Path(tempfile.mkdtemp(prefix="imgtools-overhead-"))
    try:
        report = anyio.run(run, args, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(save_results("mcp_overhead", report, table(report)))


if __name__ == "__main__":
    main()
