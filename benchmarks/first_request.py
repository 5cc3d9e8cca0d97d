"""First-request latency after start, with and without IMGTOOLS_WARMUP: fresh server processes, real-size SD 1.5.

Uses warm_load.py's real-size SD 1.5 folder (random fp16 weights). One process first converts the model for
the backend (OpenVINO on a CPU; not timed), so every timed process starts from a warm cache, as a restarted
server does. Then, in turn for `--rounds` rounds, fresh processes with the in-process MCP client:

- warm-up off: the first `generate` loads the model and compiles its shape itself;
- warm-up on: the server loads and runs the model at start; the first `generate` is sent once engine_status
  says the warm-up is ready (a server that has been up a little while), and the time the warm-up took is
  reported beside it.

The first request is a plain 512² generate (the family's native size, one image), the shape the warm-up runs.
On CUDA the torch backend's auto fast path compiles the UNet with CUDA graphs, where the warm-up is `auto`; on
a CPU the OpenVINO compile of the shape is what moves.

    .venv/bin/python benchmarks/first_request.py [--steps 8] [--rounds 2] [--device auto] [--model-dir DIR]

Writes benchmarks/results/first_request-<device kind>.json and .md.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from common import log, save_results, scratch
from warm_load import CHILD_PREAMBLE, MCP_CHILD, PROMPT, child, write_model

FIRST_REQUEST_CHILD = CHILD_PREAMBLE + r"""
async def main():
    async with Client(build_server(settings)) as client:
        up_s = time.perf_counter() - started
        warmup = (await client.call_tool("engine_status", {})).structured_content["warmup"]
        while warmup["state"] in ("pending", "running"):
            await anyio.sleep(0.25)
            warmup = (await client.call_tool("engine_status", {})).structured_content["warmup"]
        sent = time.perf_counter()
        result = await client.call_tool("generate", request)
        latency_s = time.perf_counter() - sent
    assert not result.is_error, result.content[0].text
    content = result.structured_content
    print(json.dumps({"timings": content["timings"], "engine": content["engine"], "first_request_s": latency_s,
                      "up_s": up_s, "warmup": warmup, "wall_s": time.perf_counter() - started}))
anyio.run(main)
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--model-dir", type=Path, help="where the real-size random-weight model goes (reused)")
    args = parser.parse_args()
    with scratch("imgtools-first-") as work:  # the model (unless --model-dir), IRs and compiled blobs
        measure(args, work)


def measure(args: argparse.Namespace, work: Path) -> None:
    from imgtools_mcp.engine.device import probe

    facts = probe(args.device)
    model = write_model(args.model_dir or work / "sd15-random")
    request = {"prompt": PROMPT, "steps": args.steps, "guidance_scale": 7.0, "sampler": "euler", "seed": 1234}

    def settings(warmup: str) -> str:
        # quantize none: int8 calibration would change the UNet between processes.
        return json.dumps({"model": str(model), "output_dir": str(work / "out"), "device": args.device,
                           "cache_dir": str(work / "cache"), "hf_offline": True, "quantize": "none",
                           "warmup": warmup})  # fmt: skip

    log("priming the backend cache (first use converts; not timed)")
    child(MCP_CHILD, json.dumps(request), settings("off"))
    runs: dict[str, list[dict]] = {"off": [], "on": []}
    for round_ in range(args.rounds):
        for warmup in ("off", "on"):
            run = child(FIRST_REQUEST_CHILD, json.dumps(request), settings(warmup))
            runs[warmup].append(run)
            log(f"round {round_ + 1}, warm-up {warmup}: first request {run['first_request_s']:.1f} s, "
                f"{json.dumps(run['timings'])}; warm-up {run['warmup'].get('seconds')}")
    report = {"request": request, "model": "SD 1.5 architecture, random fp16 weights on disk", "runs": runs,
              "machine": {"device": facts.torch_device, "name": facts.name, "cores": facts.cpu_cores,
                          "bf16_native": facts.supports_bf16}}  # fmt: skip
    print(save_results(f"first_request-{facts.kind}", report, table(report)))


def table(report: dict) -> str:
    r, m = report["request"], report["machine"]
    lines = [
        "# First request after start, with and without the warm-up (IMGTOOLS_WARMUP)",
        "",
        f"{report['model']}; fresh server processes on a warm backend cache; the first `generate`: 512x512 (native), "
        f"{r['steps']} {r['sampler']} steps, guidance {r['guidance_scale']}. Machine: {m['name']} ({m['device']}, "
        f"{m['cores']} cores).",
        "",
        "| warm-up | round | first request s | its load s | its backend prepare s | warm-up s (at start) | backend |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for warmup, runs in report["runs"].items():
        for i, run in enumerate(runs, 1):
            t, w = run["timings"], run["warmup"]
            seconds = f"{w['seconds']:.1f}" if w.get("seconds") else "—"
            lines.append(f"| {warmup} ({w['state']}) | {i} | {run['first_request_s']:.2f} | {t['load_s']:.2f} | "
                         f"{t['backend_prepare_s']:.2f} | {seconds} | {run['engine']['backend']} |")  # fmt: skip
    off = statistics.median(run["first_request_s"] for run in report["runs"]["off"])
    on = statistics.median(run["first_request_s"] for run in report["runs"]["on"])
    lines += ["", f"Median first request: {off:.2f} s without the warm-up, {on:.2f} s after it ({off / on:.2f}×; "
                  f"{off - on:.2f} s moved to start-up)."]  # fmt: skip
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
