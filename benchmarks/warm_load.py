"""Warm start and whole generate, end to end: fresh server processes on a real-size SD 1.5 pipeline (random weights).

1. Writes a diffusers folder with the real SD 1.5 architectures (UNet, VAE, CLIP ViT-L text encoder; configs in
   unet_step.py) and random fp16 weights, like a downloaded checkpoint (once; reused with --model-dir).
2. Fresh processes, each one `generate` call through the in-process MCP client (the product path):
   - engine bf16 (IMGTOOLS_QUANTIZE=none), empty IMGTOOLS_CACHE_DIR: the first use converts the UNet and VAE
     decoder to OpenVINO;
   - the same again, same cache dir: the warm cached load (torch weights from disk + compiled graphs from
     the cache), the number the ≤ 10 s target is about;
   - engine auto on a CPU with VNNI/AMX: int8 activations (openvino_int8.py). One process generates (bf16, its
     UNet inputs kept), waits for the background calibration and generates again with the int8 UNet; then a
     fresh process reads the int8 IR from disk (the warm int8 row);
   - torch backend, and plain diffusers (`from_pretrained(..., torch_dtype=torch.float32)`, one pipeline call) with
     the same request, for a measured whole generate.
Each child reports the tool's own timings (load_s, backend_prepare_s, generate_s) and its wall time from
process start, which includes importing torch/diffusers.

    .venv/bin/python benchmarks/warm_load.py [--steps 8] [--model-dir DIR]

Writes benchmarks/results/warm_load.json and .md (warm_load-no-bf16.* on a CPU without native bf16).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

from common import CLIP_L, SD15_UNET, SD_VAE, log, save_results, scratch

PROMPT = "a lighthouse on a cliff at dusk, oil painting"


def write_model(folder: Path) -> Path:
    """A real-size SD 1.5 diffusers folder with random fp16 weights (~2 GB)."""
    import torch
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    from imgtools_mcp.testing.tiny_sd import write_clip_tokenizer

    if (folder / "model_index.json").exists():
        return folder
    write_clip_tokenizer(folder / "tokenizer-src")
    tokenizer = CLIPTokenizer.from_pretrained(folder / "tokenizer-src")
    ids = {"bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id, "pad_token_id": tokenizer.eos_token_id}
    torch.manual_seed(0)
    pipe = StableDiffusionPipeline(
        vae=AutoencoderKL.from_config(SD_VAE),
        text_encoder=CLIPTextModel(CLIPTextConfig(**CLIP_L, **ids)),
        tokenizer=tokenizer,
        unet=UNet2DConditionModel.from_config(SD15_UNET),
        scheduler=EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                         timestep_spacing="leading", steps_offset=1),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )  # fmt: skip
    pipe.to(torch.float16).save_pretrained(folder, safe_serialization=True)
    return folder


# What every MCP child starts with: the request and Settings as JSON arguments, the clock from process start.
CHILD_PREAMBLE = r"""
import json, sys, time
started = time.perf_counter()
import anyio
from mcp import Client
from imgtools_mcp.config import Settings
from imgtools_mcp.server import build_server
request = json.loads(sys.argv[1])
settings = Settings(**json.loads(sys.argv[2]))
"""

MCP_CHILD = CHILD_PREAMBLE + r"""
async def main():
    async with Client(build_server(settings)) as client:
        result = await client.call_tool("generate", request)
    assert not result.is_error, result.content[0].text
    content = result.structured_content
    print(json.dumps({"timings": content["timings"], "engine": content["engine"], "wall_s": time.perf_counter() - started}))
anyio.run(main)
"""

CALIBRATE_CHILD = CHILD_PREAMBLE + r"""
async def main():
    async with Client(build_server(settings)) as client:
        first = await client.call_tool("generate", request)
        assert not first.is_error, first.content[0].text
        waited = time.perf_counter()
        while True:
            (loaded,) = (await client.call_tool("engine_status", {})).structured_content["loaded_models"]
            state = (loaded.get("quantization") or {}).get("int8_activations")
            if state not in ("calibrating", "quantizing"):
                break
            if state == "calibrating":  # fewer steps than calibration needs: another request adds its inputs
                assert not (await client.call_tool("generate", request)).is_error
            await anyio.sleep(2)
        waited = time.perf_counter() - waited
        second = await client.call_tool("generate", request)
    assert not second.is_error, second.content[0].text
    content = second.structured_content
    print(json.dumps({"timings": content["timings"], "engine": content["engine"], "wall_s": time.perf_counter() - started,
                      "first_timings": first.structured_content["timings"], "calibration_wait_s": waited,
                      "int8_state": state}))
anyio.run(main)
"""

PLAIN_CHILD = r"""
import json, sys, time
started = time.perf_counter()
import torch
from diffusers import AutoPipelineForText2Image, EulerDiscreteScheduler
request = json.loads(sys.argv[1])
load_started = time.perf_counter()
# fp32, diffusers' documented default; said explicitly because transformers 5 would load the fp16 text encoder as fp16.
pipe = AutoPipelineForText2Image.from_pretrained(sys.argv[2], torch_dtype=torch.float32)
pipe.scheduler = EulerDiscreteScheduler.from_config(pipe.scheduler.config)
pipe.set_progress_bar_config(disable=True)
load_s = time.perf_counter() - load_started
call_started = time.perf_counter()
pipe(prompt=request["prompt"], width=request["width"], height=request["height"], num_inference_steps=request["steps"],
     guidance_scale=request["guidance_scale"], generator=torch.Generator("cpu").manual_seed(request["seed"]))
print(json.dumps({"timings": {"load_s": load_s, "generate_s": time.perf_counter() - call_started},
                  "wall_s": time.perf_counter() - started}))
"""


def child(code: str, *argv: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("IMGTOOLS_")}
    env.update(HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    done = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise RuntimeError(f"child failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--model-dir", type=Path, help="where the real-size random-weight model goes (reused)")
    parser.add_argument("--skip-plain", action="store_true", help="skip the plain diffusers (fp32) run")
    parser.add_argument("--skip-int8", action="store_true", help="skip the int8-activation runs (minutes of calibration)")
    args = parser.parse_args()
    with scratch("imgtools-warm-") as work:  # the model (unless --model-dir), IRs and compiled blobs
        measure(args, work)


def measure(args: argparse.Namespace, work: Path) -> None:
    model_dir = args.model_dir or work / "sd15-random"
    log(f"writing the model to {model_dir}")
    model = write_model(model_dir)
    request = {"prompt": PROMPT, "width": 512, "height": 512, "steps": args.steps, "guidance_scale": 7.0,
               "sampler": "euler", "seed": 1234}  # fmt: skip
    cache = work / "cache"

    def settings(backend: str, quantize: str = "none") -> str:
        return json.dumps({"model": str(model), "output_dir": str(work / "out"), "device": "cpu", "backend": backend,
                           "cache_dir": str(cache), "hf_offline": True, "quantize": quantize})  # fmt: skip

    from imgtools_mcp.engine.backends.openvino_int8 import choose
    from imgtools_mcp.engine.device import probe
    from imgtools_mcp.engine.quantize import installed_packages

    int8 = choose("auto", probe("cpu"), installed_packages())
    runs: dict[str, dict] = {}
    for label, code, argv in (
        ("engine bf16, first use (converts)", MCP_CHILD, (json.dumps(request), settings("auto"))),
        ("engine bf16, warm cache", MCP_CHILD, (json.dumps(request), settings("auto"))),
        ("engine auto, int8 activations after calibration", CALIBRATE_CHILD, (json.dumps(request), settings("auto", "auto"))),
        ("engine auto, int8 activations, warm cache", MCP_CHILD, (json.dumps(request), settings("auto", "auto"))),
        ("engine, torch backend", MCP_CHILD, (json.dumps(request), settings("torch"))),
        ("plain diffusers (fp32)", PLAIN_CHILD, (json.dumps(request), str(model))),
    ):
        if label.startswith("plain") and args.skip_plain:
            continue
        if "int8" in label and (args.skip_int8 or not int8.value):
            continue
        log(f"run: {label}")
        runs[label] = child(code, *argv)
        log(f"  {json.dumps(runs[label]['timings'])}, wall {runs[label]['wall_s']:.1f} s")
    facts = probe("cpu")
    report = {"request": request, "model": "SD 1.5 architecture, random fp16 weights on disk", "runs": runs,
              "int8_activations": {"enabled": int8.value, "reason": int8.reason},
              "machine": {"cpu": facts.name, "cores": facts.cpu_cores, "bf16_native": facts.supports_bf16,
                          "cpu_flags": sorted(facts.cpu_features)}}  # fmt: skip
    # A CPU without native bf16 (the engine runs fp32 there) does not replace the results of one that has it.
    stem = "warm_load" + ("" if facts.supports_bf16 else "-no-bf16")
    print(save_results(stem, report, table(report)))


def table(report: dict) -> str:
    r = report["request"]
    lines = [
        "# Warm start and whole generate, fresh processes",
        "",
        f"{report['model']}; one `generate` per process: {r['width']}x{r['height']}, {r['steps']} {r['sampler']} steps, "
        f"guidance {r['guidance_scale']}."
        + (f" Machine: {m['cpu']}, {m['cores']} cores, native bf16 {'yes' if m['bf16_native'] else 'no'}." if (m := report.get("machine")) else ""),
        "",
        "| run | backend | load s | backend prepare s | generate s | wall s from process start |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for label, run in report["runs"].items():
        t = run["timings"]
        backend = run.get("engine", {}).get("backend", "torch (fp32)")
        generate = t["generate_s"] - t.get("backend_prepare_s", 0.0)
        lines.append(f"| {label} | {backend} | {t['load_s']:.2f} | {t.get('backend_prepare_s', 0.0):.2f} | {generate:.2f} | {run['wall_s']:.1f} |")
    warm = report["runs"].get("engine bf16, warm cache")
    if warm:
        t = warm["timings"]
        lines += ["", f"Warm cached load (torch weights from disk + compiled graphs from the cache): "
                      f"{t['load_s'] + t['backend_prepare_s']:.2f} s (target ≤ 10 s)."]  # fmt: skip
    plain = report["runs"].get("plain diffusers (fp32)")
    for name in ("engine bf16, warm cache", "engine auto, int8 activations, warm cache"):
        run = report["runs"].get(name)
        if run and plain:
            engine_generate = run["timings"]["generate_s"] - run["timings"]["backend_prepare_s"]
            lines.append(f"Whole generate, measured: plain diffusers {plain['timings']['generate_s']:.1f} s, {name} "
                         f"{engine_generate:.1f} s: {plain['timings']['generate_s'] / engine_generate:.2f}×.")
    calibrated = report["runs"].get("engine auto, int8 activations after calibration")
    if calibrated:
        q = calibrated["engine"].get("quantization", {})
        lines += ["", f"int8 activations: state {calibrated['int8_state']} after {calibrated['calibration_wait_s']:.0f} s of "
                  f"background calibration; {q.get('reason', '')}"]
    notes = (warm or {}).get("engine", {}).get("backend_notes", [])
    if notes:
        lines += ["", "Backend notes of the warm run: " + "; ".join(notes)]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
