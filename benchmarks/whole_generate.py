"""Whole generate, side by side in one process: the engine in bf16, the engine with int8 activations, plain diffusers.

A real-size SD 1.5 pipeline with random fp16 weights (warm_load.write_model), 512², 25 Euler steps, CFG 7. Three
variants, called turn by turn after one warm-up each, so a machine whose speed drifts (shared CPUs do) drifts for
all of them alike:

- engine bf16: `generate` through the in-process MCP client, OpenVINO backend, IMGTOOLS_QUANTIZE=none;
- engine int8: the same with IMGTOOLS_QUANTIZE=nncf_w8a8 — calibrated first on its own requests when the cache has
  no int8 IR for this model yet (minutes, in the background; the wait is reported, not timed as generate); its
  VAE decoder is int8 too where the calibration made one (the table says which components ran int8);
- plain diffusers: `AutoPipelineForText2Image.from_pretrained(..., torch_dtype=torch.float32)`, one pipeline call
  (the engine rows' images come from the same seed and prompt).

Each engine row's seconds are the tool's own `generate_s` minus its backend preparation (nothing to prepare after
the warm-up); plain diffusers' are the pipeline call's wall time. The drift row compares the int8 image with the
bf16 one of the same seed (random weights only bound a trained model's drift).

    flock /tmp/bench.lock .venv/bin/python benchmarks/whole_generate.py [--rounds 3] [--plain-rounds 1]
        [--model-dir DIR] [--cache-dir DIR]     # ~15-25 min on 2 cores, most of it plain diffusers and calibration

Writes benchmarks/results/whole_generate.json and .md (whole_generate-no-amx.* on a CPU without AMX).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import anyio
import numpy as np
from common import log, no_amx_suffix, save_results
from warm_load import PROMPT, write_model

REQUEST = {"prompt": PROMPT, "width": 512, "height": 512, "steps": 25, "guidance_scale": 7.0, "sampler": "euler",
           "seed": 1234}  # fmt: skip


def pixels(result) -> np.ndarray:
    from PIL import Image

    assert not result.is_error, result.content[0].text
    return np.asarray(Image.open(result.structured_content["images"][0]["path"]).convert("RGB"), dtype=np.float64) / 255


def psnr(a: np.ndarray, reference: np.ndarray) -> float:
    mse = float(((a - reference) ** 2).mean())
    return float("inf") if mse == 0 else float(10 * np.log10(1.0 / mse))


async def measure(args: argparse.Namespace, model: Path, cache: Path, out: Path) -> dict:
    import torch
    from diffusers import AutoPipelineForText2Image, EulerDiscreteScheduler
    from mcp import Client

    from imgtools_mcp.config import Settings
    from imgtools_mcp.engine.device import probe
    from imgtools_mcp.server import build_server

    request = {**REQUEST, "steps": args.steps}

    def settings(quantize: str, name: str) -> Settings:
        return Settings(model=str(model), output_dir=out / name, device="cpu", backend="openvino", cache_dir=cache,
                        hf_offline=True, quantize=quantize)  # fmt: skip

    report: dict = {"request": request, "rounds": args.rounds, "plain_rounds": args.plain_rounds,
                    "load_average_start": os.getloadavg()}  # fmt: skip
    async with Client(build_server(settings("none", "bf16"))) as bf16, Client(build_server(settings("nncf_w8a8", "int8"))) as int8:
        log("int8: first requests (calibration, unless the cache has this model's int8 IR)")
        started = time.perf_counter()
        calls = 0
        while True:
            result = await int8.call_tool("generate", request)
            calls += 1
            quantization = result.structured_content["engine"]["quantization"]
            if quantization["method"] == "nncf_w8a8":
                break  # this request ran the int8 UNet
            state = quantization.get("int8_activations")
            while state == "quantizing":
                await anyio.sleep(5)
                (loaded,) = (await int8.call_tool("engine_status", {})).structured_content["loaded_models"]
                quantization = loaded["quantization"]
                state = quantization["int8_activations"]
            if state not in ("calibrating", "ready"):  # ready: the next request runs it
                raise RuntimeError(f"int8 activations ended {state}: {quantization['reason']}")
        report["int8_preparation"] = {"seconds": time.perf_counter() - started, "requests": calls,
                                      "quantization": result.structured_content["engine"]["quantization"]}  # fmt: skip
        log(f"int8 ready after {report['int8_preparation']['seconds']:.0f} s, {calls} requests")

        log("bf16: warm-up request (converts or reads the IR, compiles the shape)")
        await bf16.call_tool("generate", request)
        log("plain diffusers: loading (fp32)")
        # fp32, diffusers' documented default; said explicitly because transformers 5 would load the fp16 text encoder as fp16.
        pipe = AutoPipelineForText2Image.from_pretrained(model, torch_dtype=torch.float32)
        pipe.scheduler = EulerDiscreteScheduler.from_config(pipe.scheduler.config)
        pipe.set_progress_bar_config(disable=True)

        def plain() -> None:
            pipe(prompt=request["prompt"], width=request["width"], height=request["height"],
                 num_inference_steps=request["steps"], guidance_scale=request["guidance_scale"],
                 generator=torch.Generator("cpu").manual_seed(request["seed"]))  # fmt: skip

        seconds: dict[str, list[float]] = {"engine bf16 (quantize none)": [], "engine int8 activations (nncf_w8a8)": [],
                                           "plain diffusers (torch fp32)": []}  # fmt: skip
        images: dict[str, np.ndarray] = {}
        for round_index in range(args.rounds):
            for name, client in (("engine bf16 (quantize none)", bf16), ("engine int8 activations (nncf_w8a8)", int8)):
                result = await client.call_tool("generate", request)
                timings = result.structured_content["timings"]
                seconds[name].append(timings["generate_s"] - timings.get("backend_prepare_s", 0.0))
                images[name] = pixels(result)
                log(f"round {round_index + 1}/{args.rounds} {name}: {seconds[name][-1]:.1f} s")
            if round_index < args.plain_rounds:
                started = time.perf_counter()
                await anyio.to_thread.run_sync(plain)
                seconds["plain diffusers (torch fp32)"].append(time.perf_counter() - started)
                log(f"round {round_index + 1} plain diffusers: {seconds['plain diffusers (torch fp32)'][-1]:.1f} s")
        report["int8_engine"] = result.structured_content["engine"]
    report["seconds"] = seconds
    report["median_s"] = {name: statistics.median(values) for name, values in seconds.items() if values}
    report["drift"] = {"pixel_psnr_db": psnr(images["engine int8 activations (nncf_w8a8)"], images["engine bf16 (quantize none)"]),
                       "pixel_max_abs": float(np.abs(images["engine int8 activations (nncf_w8a8)"]
                                                     - images["engine bf16 (quantize none)"]).max())}  # fmt: skip
    facts = probe("cpu")
    report["machine"] = {"cpu": facts.name, "cores": facts.cpu_cores, "bf16_native": facts.supports_bf16,
                         "cpu_flags": sorted(facts.cpu_features)}  # fmt: skip
    report["load_average_end"] = os.getloadavg()
    return report


def table(report: dict) -> str:
    r, m, medians = report["request"], report["machine"], report["median_s"]
    plain = medians.get("plain diffusers (torch fp32)")
    bf16 = medians["engine bf16 (quantize none)"]
    prep = report["int8_preparation"]
    lines = [
        "# Whole generate, side by side: engine bf16, engine int8 activations, plain diffusers",
        "",
        f"SD 1.5 architecture, random fp16 weights on disk; {r['width']}x{r['height']}, {r['steps']} {r['sampler']} steps, "
        f"CFG {r['guidance_scale']}, one image. Machine: {m['cpu']}, {m['cores']} cores, native bf16 "
        f"{'yes' if m['bf16_native'] else 'no'}, {', '.join(f for f in m['cpu_flags'] if 'vnni' in f or 'amx' in f) or 'no VNNI/AMX'}. "
        f"Turn by turn: {report['rounds']} rounds of the engine rows, {report['plain_rounds']} of plain diffusers, after "
        f"one warm-up each; medians. Load average at start {'/'.join(f'{x:.1f}' for x in report['load_average_start'])}, "
        f"at end {'/'.join(f'{x:.1f}' for x in report['load_average_end'])}.",
        "",
        "| variant | generate s (median) | runs | × engine bf16 | × plain diffusers |",
        "|---|---:|---|---:|---:|",
    ]
    for name, median in medians.items():
        runs = ", ".join(f"{s:.1f}" for s in report["seconds"][name])
        vs_plain = f"{plain / median:.2f}×" if plain else "n/a"
        lines.append(f"| {name} | {median:.1f} | {runs} | {bf16 / median:.2f}× | {vs_plain} |")
    q = prep["quantization"]
    lines += [
        "",
        f"int8 preparation before the timed rounds: {prep['seconds']:.0f} s over {prep['requests']} request(s) "
        f"(calibration in the background, or the int8 IR read from the cache); {q.get('reason', '')}.",
        f"int8 components in the timed rounds: {', '.join(report['int8_engine']['quantization'].get('components', []))}"
        + (f"; VAE decoder {q['vae_decoder']['state']}: {q['vae_decoder']['reason']}." if q.get("vae_decoder") else "."),
        f"Drift, int8 against bf16 image of the same seed: pixel PSNR {report['drift']['pixel_psnr_db']:.1f} dB, max "
        f"difference {report['drift']['pixel_max_abs'] * 255:.0f} of 255 levels (random weights: a bound on the "
        "arithmetic, not a trained model's image quality).",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds of the engine rows")
    parser.add_argument("--plain-rounds", type=int, default=1, help="timed plain diffusers runs (5× slower)")
    parser.add_argument("--model-dir", type=Path, help="where the real-size random-weight model goes (reused)")
    parser.add_argument("--cache-dir", type=Path, help="IMGTOOLS_CACHE_DIR (reused: an int8 IR there skips calibration)")
    args = parser.parse_args()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    work = Path(tempfile.mkdtemp(prefix="imgtools-whole-"))
    try:
        model = write_model(args.model_dir or work / "sd15-random")
        report = anyio.run(measure, args, model, args.cache_dir or work / "cache", work / "out")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(save_results("whole_generate" + no_amx_suffix(report["machine"]["cpu_flags"]), report, table(report)))


if __name__ == "__main__":
    main()
