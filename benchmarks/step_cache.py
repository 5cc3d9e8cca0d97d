"""Step caches for `speed`: seconds and drift at quality / balanced / fast, side by side in one process.

Two denoising loops (denoiser + scheduler only; no text encoders or VAE), each run once per speed through the
engine's own `step_cache` context (src/imgtools_mcp/engine/step_cache.py), bf16 on CPU, torch backend:

1. SD 1.5: the real-size UNet2DConditionModel from its diffusers config, random weights, 512² (64² latents),
   CFG batch 2 (guidance 7.5), 25 Euler steps. Step cache: DeepCache-style deep-feature reuse.
2. FLUX.1 dev layout at reduced depth (1 double + 2 single blocks of its 19 + 38, full width), random weights,
   512² (1024 image tokens + 512 text tokens), one pass per step (distilled guidance), 25 flow-match Euler
   steps. Step cache: diffusers' First Block Cache.

Drift is the PSNR of the final latents against the quality run's (same seed, same inputs), over the quality
latents' range. Random weights only bound it: a trained model's features change more smoothly between steps,
so what reuse costs in a real image is not measured here. The three speeds run in lockstep (a step of each in
turn, on separate copies of the model) so that the shared machine's changing load falls on all of them alike;
a run's time is the sum of its step times, and, for the UNet, the median full and reused pass are reported.

    flock /tmp/bench.lock timeout 1500 .venv/bin/python benchmarks/step_cache.py
    .venv/bin/python benchmarks/step_cache.py --tiny   # tiny widths, 64², 8 steps: checks the code in seconds
"""

from __future__ import annotations

import argparse
import copy
import math
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path
from collections.abc import Iterator
from types import SimpleNamespace

import torch
from common import RESULTS, SD15_UNET, log, save_results
from family_step import FAMILIES as DIT_FAMILIES
from family_step import construct
from family_step import inputs as dit_inputs

from imgtools_mcp.engine.step_cache import SPEEDS, step_cache

DTYPE = torch.bfloat16
TINY_UNET = {**SD15_UNET, "block_out_channels": [32, 64], "down_block_types": ["CrossAttnDownBlock2D", "DownBlock2D"],
             "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D"], "cross_attention_dim": 32, "norm_num_groups": 8,
             "attention_head_dim": 4, "sample_size": 8}  # fmt: skip


def psnr(latents: torch.Tensor, reference: torch.Tensor) -> float:
    mse = float(((latents.float() - reference.float()) ** 2).mean())
    span = float(reference.float().max() - reference.float().min())
    return math.inf if mse == 0 else 10 * math.log10(span**2 / mse)


def unet_loop(unet: torch.nn.Module, speed: str, size: int, steps: int, result: dict) -> Iterator[None]:
    """One SD denoising loop, a step per `next()`; fills `result` when it ends."""
    from diffusers import EulerDiscreteScheduler

    scheduler = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                       timestep_spacing="leading", steps_offset=1)
    scheduler.set_timesteps(steps)
    generator = torch.Generator().manual_seed(0)
    latents = torch.randn(1, 4, size // 8, size // 8, generator=generator) * scheduler.init_noise_sigma
    text = torch.randn(2, 77, unet.config.cross_attention_dim, generator=generator).to(DTYPE)
    full, reused = [], []
    with torch.inference_mode(), step_cache(SimpleNamespace(unet=unet), speed, single_pass=False) as run:
        for t in scheduler.timesteps:
            computed_before, began = run.computed if run else 0, time.perf_counter()
            model_input = scheduler.scale_model_input(torch.cat([latents] * 2), t).to(DTYPE)
            noise = unet(model_input, t, encoder_hidden_states=text, return_dict=False)[0].float()
            uncond, cond = noise.chunk(2)
            latents = scheduler.step(uncond + 7.5 * (cond - uncond), t, latents).prev_sample
            (full if run is None or run.computed > computed_before else reused).append(time.perf_counter() - began)
            yield
    result.update(speed=speed, seconds=sum(full) + sum(reused), cache=run.as_dict() if run else None, latents=latents,
                  full_pass_s=statistics.median(full) if full else None,
                  reused_pass_s=statistics.median(reused) if reused else None)


def dit_loop(transformer: torch.nn.Module, speed: str, size: int, steps: int, result: dict) -> Iterator[None]:
    """One FLUX.1 flow-matching loop, a step per `next()`; fills `result` when it ends."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0)
    scheduler.set_timesteps(steps)
    torch.manual_seed(0)
    kwargs = dit_inputs("flux", DTYPE, "cpu", size=size)
    latents = kwargs.pop("hidden_states").float()
    kwargs.pop("timestep")
    kwargs["encoder_hidden_states"] = kwargs["encoder_hidden_states"][:, :, : transformer.config.joint_attention_dim]
    kwargs["pooled_projections"] = kwargs["pooled_projections"][:, : transformer.config.pooled_projection_dim]
    times = []
    with torch.inference_mode(), step_cache(SimpleNamespace(transformer=transformer), speed, single_pass=True) as run:
        for t in scheduler.timesteps:
            began = time.perf_counter()
            timestep = (t / 1000).expand(latents.shape[0]).to(DTYPE)
            out = transformer(hidden_states=latents.to(DTYPE), timestep=timestep, return_dict=False, **kwargs)[0].float()
            latents = scheduler.step(out, t, latents).prev_sample
            times.append(time.perf_counter() - began)
            yield
    result.update(speed=speed, seconds=sum(times), cache=run.as_dict() if run else None, latents=latents)


def measure(name: str, loop, model: torch.nn.Module, size: int, steps: int) -> dict:
    """The three speeds' loops in lockstep, each on its own copy of the model, the order rotating every step:
    a change in the machine's load falls on all three alike."""
    load_start = os.getloadavg()
    for _ in loop(model, "quality", size, min(steps, 2), {}):  # warm-up: first-call allocations and kernel choices
        pass
    models = {speed: model if speed == "quality" else copy.deepcopy(model) for speed in SPEEDS}
    results: dict[str, dict] = {speed: {} for speed in SPEEDS}
    loops = {speed: loop(models[speed], speed, size, steps, results[speed]) for speed in SPEEDS}
    for step in range(steps):
        for speed in SPEEDS[step % 3:] + SPEEDS[: step % 3]:
            next(loops[speed])
    for speed in SPEEDS:
        next(loops[speed], None)  # past the last step: the loop closes its step cache and fills its result
    runs = [results[speed] for speed in SPEEDS]
    reference = runs[0]["latents"]
    rows = []
    for run in runs:
        latents = run.pop("latents")
        rows.append({**run, "speedup": runs[0]["seconds"] / run["seconds"], "psnr_db": psnr(latents, reference)})
        log(f"{name} {run['speed']}: {run['seconds']:.1f} s, cache {run['cache']}")
    return {"name": name, "size": size, "steps": steps, "rows": rows,
            "loadavg_start": list(load_start), "loadavg_end": list(os.getloadavg())}


def table(report: dict) -> str:
    lines = [f"# Step caches (`speed`): {report['mode']}", "",
             f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
             f"bf16, torch backend. The three speeds run in lockstep after a 2-step warm-up, each on its own copy of the "
             "model, one step of each in turn (the order rotating), so load changes fall on all three alike; "
             "loop s is the sum of a run's step times.", ""]
    for part in report["parts"]:
        load = ", ".join(f"{x:.1f}" for x in part["loadavg_start"]) + " → " + f"{part['loadavg_end'][0]:.1f}"
        lines += [f"## {part['name']}", "", f"{part['size']}², {part['steps']} steps. Load average (1/5/15 min) at start: {load} "
                  f"(1 min at end).", "",
                  "| speed | method | computed / passes | loop s | × quality | PSNR vs quality (dB) | full pass s | reused pass s |",
                  "|---|---|---:|---:|---:|---:|---:|---:|"]
        for row in part["rows"]:
            cache = row["cache"] or {}
            setting = (f"{cache['method']} {cache.get('threshold', '')}{'interval ' + str(cache['interval']) if 'interval' in cache else ''}"
                       if cache else "none")
            counts = f"{cache['computed']} / {cache['denoiser_passes']}" if "computed" in cache else f"{part['steps']} / {part['steps']}"
            fmt = lambda v: "" if v is None else f"{v:.2f}"  # noqa: E731
            drift = "—" if math.isinf(row["psnr_db"]) else f"{row['psnr_db']:.1f}"
            lines.append(f"| {row['speed']} | {setting} | {counts} | {row['seconds']:.1f} | {row['speedup']:.2f}× | "
                         f"{drift} | {fmt(row.get('full_pass_s'))} | {fmt(row.get('reused_pass_s'))} |")
        lines.append("")
    lines += ["Random weights: the PSNR bounds the drift of these layouts, not of trained models. "
              "FLUX.1 runs 1 double + 2 single blocks of its 19 + 38 (full width); First Block Cache (balanced) decides "
              "reuse from how much the first block's output changes, so the reduced depth changes how often it reuses; "
              "TaylorSeer (fast) reuses on a fixed schedule, and its predicted passes skip every block, so depth only "
              "scales what it saves.", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="tiny widths, 64², 8 steps; writes step_cache-tiny.*")
    parser.add_argument("--only", choices=("sd15", "flux"), help="run one of the two parts")
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    size, steps = (64, 8) if args.tiny else (512, 25)
    parts = []
    if args.only in (None, "sd15"):
        from diffusers import UNet2DConditionModel

        log("building the SD 1.5 UNet (random weights)")
        torch.manual_seed(0)
        unet = UNet2DConditionModel.from_config(TINY_UNET if args.tiny else SD15_UNET).to(DTYPE).eval()
        parts.append(measure("SD 1.5 UNet, CFG batch 2", unet_loop, unet, size, steps))
        del unet
    if args.only in (None, "flux"):
        import diffusers

        spec = DIT_FAMILIES["flux"]
        config = {**spec["config"], "num_layers": 1, "num_single_layers": 2}
        if args.tiny:
            config.update(num_attention_heads=2, joint_attention_dim=64, pooled_projection_dim=32)
        log("building the reduced-depth FLUX.1 transformer (random weights)")
        torch.manual_seed(0)
        transformer = construct(getattr(diffusers, spec["cls"]), config, DTYPE, "cpu")
        parts.append(measure("FLUX.1 dev layout, 1 double + 2 single blocks, one pass per step", dit_loop, transformer, size, steps))
    report = {"mode": "tiny check" if args.tiny else "SD 1.5 UNet and FLUX.1 (reduced depth) at 512², 25 steps", "parts": parts}
    stem = "step_cache-tiny" if args.tiny else "step_cache-cpu"
    if args.only:
        stem += f"-{args.only}"
    folder = Path(tempfile.gettempdir()) if args.tiny else RESULTS  # a tiny check is not a result
    print(save_results(stem, report, table(report), folder=folder))


if __name__ == "__main__":
    main()
