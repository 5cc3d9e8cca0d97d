"""bf16 vs torchao int8 weight-only per denoiser step and peak RSS, and First Block Cache speed-up and drift.

A small-but-not-trivial FLUX.1-layout transformer (random weights, 1024 image tokens = 512² with 512 text tokens)
is timed per step in bf16 and with int8 weights, each variant in its own process so peak RSS is its own. The
step caches run the tiny test FLUX.1 pipeline (imgtools_mcp.testing) for 12 steps at each `speed`, against
`quality` on the same seed: passes computed/reused, seconds, and the pixel drift (PSNR). Random weights only
bound the drift; they say nothing about how a trained model degrades.

    .venv/bin/python benchmarks/quant_cache.py            # CPU
    .venv/bin/python benchmarks/quant_cache.py --repeats 5

Writes benchmarks/results/quant_cache.json and .md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import log, save_results

# FLUX.1's block layout at a sixth of its width and a few blocks: big enough that matmuls dominate a step.
CONFIG = dict(patch_size=1, in_channels=64, num_layers=2, num_single_layers=4, attention_head_dim=64,
              num_attention_heads=8, joint_attention_dim=1024, pooled_projection_dim=768, guidance_embeds=True,
              axes_dims_rope=(8, 28, 28))
IMAGE_TOKENS, TEXT_TOKENS = 1024, 512


def step_worker(variant: str, repeats: int) -> dict:
    """Run in a child process: build, optionally quantize, time `repeats` steps; report seconds and peak RSS."""
    import torch
    from diffusers import FluxTransformer2DModel

    from imgtools_mcp.engine.quantize import module_bytes

    torch.manual_seed(0)
    model = FluxTransformer2DModel(**CONFIG).to(torch.bfloat16).eval()
    before = module_bytes(model)
    if variant == "int8":
        from torchao.quantization import Int8WeightOnlyConfig, quantize_

        quantize_(model, Int8WeightOnlyConfig())
    inputs = dict(
        hidden_states=torch.randn(1, IMAGE_TOKENS, 64, dtype=torch.bfloat16),
        encoder_hidden_states=torch.randn(1, TEXT_TOKENS, CONFIG["joint_attention_dim"], dtype=torch.bfloat16),
        pooled_projections=torch.randn(1, 768, dtype=torch.bfloat16),
        timestep=torch.tensor([0.5]), guidance=torch.tensor([3.5]),
        img_ids=torch.zeros(IMAGE_TOKENS, 3), txt_ids=torch.zeros(TEXT_TOKENS, 3),
    )
    times = []
    with torch.inference_mode():
        model(**inputs)  # warm-up: first call allocates and picks kernels
        for _ in range(repeats):
            started = time.perf_counter()
            model(**inputs)
            times.append(time.perf_counter() - started)
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"variant": variant, "step_s_median": statistics.median(times), "step_s": times,
            "weights_bytes": module_bytes(model), "weights_bytes_bf16": before, "peak_rss_bytes": peak_kib * 1024}


def cache_rows(steps: int) -> list[dict]:
    import numpy as np
    import torch
    from diffusers import FluxPipeline

    from imgtools_mcp.engine.step_cache import step_cache
    from imgtools_mcp.testing import make_test_model

    folder = make_test_model(Path(tempfile.mkdtemp()) / "FLUX.1-dev", "flux")
    pipe = FluxPipeline.from_pretrained(folder, torch_dtype=torch.bfloat16)
    pipe.set_progress_bar_config(disable=True)
    rows, reference = [], None
    for speed in ("quality", "balanced", "fast"):
        with step_cache(pipe, speed, single_pass=True) as run:
            started = time.perf_counter()
            image = pipe("a lighthouse at dusk", width=128, height=128, num_inference_steps=steps,
                         generator=torch.Generator().manual_seed(1), output_type="np").images[0]
            seconds = time.perf_counter() - started
        if reference is None:
            reference = image
        mse = float(np.mean((image.astype(np.float64) - reference) ** 2))
        psnr = float("inf") if mse == 0 else 10 * np.log10(1.0 / mse)
        rows.append({"speed": speed, "seconds": seconds, "computed": run.computed if run else steps,
                     "passes": run.passes if run else steps, "psnr_vs_quality_db": psnr})
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--worker", choices=["bf16", "int8"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(step_worker(args.worker, args.repeats)))
        return 0
    steps = []
    for variant in ("bf16", "int8"):
        log(f"denoiser step, {variant}")
        out = subprocess.run([sys.executable, __file__, "--worker", variant, "--repeats", str(args.repeats)],
                             capture_output=True, text=True, check=True).stdout
        steps.append(json.loads(out.strip().splitlines()[-1]))
    log("step caches")
    caches = cache_rows(args.steps)
    load = os.getloadavg()
    report = {"machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
              "load_average_at_end": load, "config": CONFIG, "image_tokens": IMAGE_TOKENS, "text_tokens": TEXT_TOKENS,
              "steps": steps, "caches": caches,
              "note": "CPU shared with other work while this ran (see load average); random weights"}
    md = [f"# bf16 vs int8 weights, and step caches ({report['machine']}, {report['cpus']} CPUs)", "",
          f"CPU was shared with other work (load average at the end {load[0]:.1f}); random weights; one run.", "",
          f"Small FLUX.1-layout transformer ({CONFIG['num_layers']}+{CONFIG['num_single_layers']} blocks, "
          f"hidden {CONFIG['num_attention_heads'] * CONFIG['attention_head_dim']}), {IMAGE_TOKENS} image + "
          f"{TEXT_TOKENS} text tokens, median of {args.repeats} steps:", "",
          "| weights | s/step | weights | peak RSS |", "|---|---|---|---|"]
    for row in steps:
        md.append(f"| {row['variant']} | {row['step_s_median']:.3f} | {row['weights_bytes'] / 2**20:.0f} MiB | "
                  f"{row['peak_rss_bytes'] / 2**20:.0f} MiB |")
    md += ["", f"Step caches on the tiny test FLUX.1 pipeline, 128², {args.steps} steps, same seed:", "",
           "| speed | s | passes computed | PSNR vs quality |", "|---|---|---|---|"]
    for row in caches:
        md.append(f"| {row['speed']} | {row['seconds']:.2f} | {row['computed']}/{row['passes']} | "
                  f"{row['psnr_vs_quality_db']:.1f} dB |")
    print(save_results("quant_cache", report, "\n".join(md) + "\n"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
