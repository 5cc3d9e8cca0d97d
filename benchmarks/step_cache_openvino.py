"""`speed` on the OpenVINO backend, whole generate side by side: quality vs balanced vs fast on real-size SD 1.5.

The CPU's default backend for SD families runs DeepCache through a shallow IR (engine/backends/
openvino_deep_cache.py). One process, one in-process MCP client (IMGTOOLS_BACKEND=openvino, IMGTOOLS_QUANTIZE=none),
warm_load.py's real-size SD 1.5 folder with random fp16 weights, 512², 25 Euler steps, CFG 7: after one warm-up
call per speed (which converts the shallow IR on its first use), the three speeds are called turn by turn for
`--rounds` rounds, so a machine whose speed drifts drifts for all alike. Seconds are the tool's `generate_s`
minus its backend preparation; drift is the pixel PSNR of each image against the quality image of the same seed
(random weights only bound a trained model's drift).

    .venv/bin/python benchmarks/step_cache_openvino.py [--rounds 2] [--steps 25] [--model-dir DIR]

Writes benchmarks/results/step_cache_openvino.json and .md.
"""

from __future__ import annotations

import argparse
import os
import statistics
from pathlib import Path

import anyio
from common import log, save_results, scratch
from warm_load import PROMPT, write_model
from whole_generate import pixels, psnr

SPEEDS = ("quality", "balanced", "fast")


async def measure(args: argparse.Namespace, model: Path, work: Path) -> dict:
    from mcp import Client

    from imgtools_mcp.config import Settings
    from imgtools_mcp.engine.device import probe
    from imgtools_mcp.server import build_server

    request = {"prompt": PROMPT, "width": 512, "height": 512, "steps": args.steps, "guidance_scale": 7.0,
               "sampler": "euler", "seed": 1234}  # fmt: skip
    settings = Settings(model=str(model), output_dir=work / "out", device="cpu", hf_offline=True, backend="openvino",
                        cache_dir=work / "cache", quantize="none", warmup="off")  # fmt: skip
    seconds: dict[str, list[float]] = {speed: [] for speed in SPEEDS}
    images: dict[str, object] = {}
    caches: dict[str, dict] = {}
    load_start = os.getloadavg()
    async with Client(build_server(settings)) as client:
        for speed in SPEEDS:
            log(f"warm-up call: {speed}")
            result = await client.call_tool("generate", {**request, "speed": speed})
            assert not result.is_error, result.content[0].text
        for round_index in range(args.rounds):
            for speed in SPEEDS:
                result = await client.call_tool("generate", {**request, "speed": speed})
                assert not result.is_error, result.content[0].text
                content = result.structured_content
                timings = content["timings"]
                seconds[speed].append(timings["generate_s"] - timings["backend_prepare_s"])
                images[speed] = pixels(result)
                caches[speed] = content["engine"].get("step_cache") or {"speed": "quality", "method": "none"}
                assert content["engine"]["backend_components"]["unet"] == "openvino", content["engine"]
                log(f"round {round_index + 1}, {speed}: {seconds[speed][-1]:.1f} s; {caches[speed]}")
    facts = probe("cpu")
    return {
        "request": request,
        "model": "SD 1.5 architecture, random fp16 weights on disk",
        "rounds": args.rounds,
        "seconds": seconds,
        "median_s": {speed: statistics.median(values) for speed, values in seconds.items()},
        "step_cache": caches,
        "psnr_vs_quality_db": {speed: psnr(images[speed], images["quality"]) for speed in SPEEDS if speed != "quality"},
        "machine": {"cpu": facts.name, "cores": facts.cpu_cores, "bf16_native": facts.supports_bf16},
        "load_average_start": load_start,
        "load_average_end": os.getloadavg(),
    }


def table(report: dict) -> str:
    r, m, medians = report["request"], report["machine"], report["median_s"]
    lines = [
        "# speed on the OpenVINO backend: whole generate, quality vs balanced vs fast",
        "",
        f"{report['model']}; `generate` through the in-process MCP client on OpenVINO bf16, {r['width']}x{r['height']}, "
        f"{r['steps']} {r['sampler']} steps, guidance {r['guidance_scale']}. Machine: {m['cpu']}, {m['cores']} cores, native "
        f"bf16 {'yes' if m['bf16_native'] else 'no'}. Turn by turn, {report['rounds']} rounds after one warm-up call each; "
        f"medians. Load average at start {'/'.join(f'{x:.1f}' for x in report['load_average_start'])}, at end "
        f"{'/'.join(f'{x:.1f}' for x in report['load_average_end'])}.",
        "",
        "| speed | generate s (median) | runs | vs quality | UNet passes computed / reused | pixel PSNR vs quality |",
        "|---|---:|---|---:|---|---:|",
    ]
    for speed in SPEEDS:
        cache = report["step_cache"][speed]
        passes = f"{cache['computed']} / {cache['reused']}" if cache.get("method") == "deep_cache" else "all / 0"
        drift = f"{report['psnr_vs_quality_db'][speed]:.1f} dB" if speed != "quality" else "—"
        runs = ", ".join(f"{s:.1f}" for s in report["seconds"][speed])
        lines.append(f"| {speed} | {medians[speed]:.1f} | {runs} | {medians['quality'] / medians[speed]:.2f}× | {passes} | {drift} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--model-dir", type=Path, help="where the real-size random-weight model goes (reused)")
    args = parser.parse_args()
    with scratch("imgtools-speed-ov-") as work:
        model = write_model(args.model_dir or work / "sd15-random")
        report = anyio.run(measure, args, model, work)
        print(save_results("step_cache_openvino", report, table(report)))


if __name__ == "__main__":
    main()
