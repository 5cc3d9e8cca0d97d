"""Seconds per denoising step at native size for each DiT family's real-size transformer (random weights), and peak memory.

Architectures are the real configs (below) with random weights: speed does not depend on weight values, and
nothing is downloaded. A transformer too big for this machine's memory (FLUX.1 is 23.8 GB in bf16) is built
with fewer blocks; the step time of the full model is extrapolated linearly from two reduced depths (the
blocks are identical, so time is fixed part + blocks x per-block time) and says so in the result. Inputs are
what the pipeline feeds the transformer at native size: packed image tokens, the text encoder's tokens at
the family's token limit, pooled embeddings, timestep (and distilled guidance). CFG families run batch 2.

    .venv/bin/python benchmarks/family_step.py --family sd3-medium          # CPU, bf16
    .venv/bin/python benchmarks/family_step.py --family flux --device cuda  # skips cleanly without CUDA

Writes benchmarks/results/family_step-<family>-<device>.json and .md.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import resource
import statistics
import sys
import time
from pathlib import Path

import torch

RESULTS = Path(__file__).parent / "results"
GB = 10**9

# name -> (diffusers class, full config, block fields with their full counts, native size, text tokens, cfg batch)
FAMILIES: dict[str, dict] = {
    "flux": dict(
        cls="FluxTransformer2DModel",
        config=dict(patch_size=1, in_channels=64, num_layers=19, num_single_layers=38, attention_head_dim=128,
                    num_attention_heads=24, joint_attention_dim=4096, pooled_projection_dim=768, guidance_embeds=True,
                    axes_dims_rope=(16, 56, 56)),
        blocks={"num_layers": 19, "num_single_layers": 38}, size=1024, text_tokens=512, batch=1, kind="flux"),
    "chroma": dict(
        cls="ChromaTransformer2DModel",
        config=dict(patch_size=1, in_channels=64, num_layers=19, num_single_layers=38, attention_head_dim=128,
                    num_attention_heads=24, joint_attention_dim=4096, axes_dims_rope=(16, 56, 56)),
        blocks={"num_layers": 19, "num_single_layers": 38}, size=1024, text_tokens=512, batch=2, kind="chroma"),
    "sd3-large": dict(
        cls="SD3Transformer2DModel",
        config=dict(sample_size=128, patch_size=2, in_channels=16, num_layers=38, attention_head_dim=64,
                    num_attention_heads=38, joint_attention_dim=4096, caption_projection_dim=2432,
                    pooled_projection_dim=2048, out_channels=16, pos_embed_max_size=192, qk_norm="rms_norm"),
        blocks={"num_layers": 38}, size=1024, text_tokens=333, batch=2, kind="sd3"),
    "sd3-medium": dict(
        cls="SD3Transformer2DModel",
        config=dict(sample_size=128, patch_size=2, in_channels=16, num_layers=24, attention_head_dim=64,
                    num_attention_heads=24, joint_attention_dim=4096, caption_projection_dim=1536,
                    pooled_projection_dim=2048, out_channels=16, pos_embed_max_size=384, qk_norm="rms_norm",
                    dual_attention_layers=tuple(range(13))),
        blocks={"num_layers": 24}, size=1024, text_tokens=333, batch=2, kind="sd3",
        note="its first 13 layers have a second attention (MMDiT-X); the reduced depths are such layers, so the "
             "extrapolation to 24 layers is an upper bound"),
}


def build(name: str, scale: dict[str, int], dtype: torch.dtype, device: str):
    import diffusers

    spec = FAMILIES[name]
    config = {**spec["config"], **scale}
    if "dual_attention_layers" in config:
        config["dual_attention_layers"] = tuple(i for i in config["dual_attention_layers"] if i < config["num_layers"])
    with torch.device("meta"):
        model = getattr(diffusers, spec["cls"])(**config)
    model = model.to_empty(device=device).to(dtype)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.02)
    return model.eval()


def inputs(name: str, dtype: torch.dtype, device: str) -> dict:
    spec = FAMILIES[name]
    batch, latent = spec["batch"], spec["size"] // 8
    text = torch.randn(batch, spec["text_tokens"], 4096, dtype=dtype, device=device)
    t = torch.full((batch,), 0.5, dtype=dtype, device=device)
    if spec["kind"] == "sd3":
        return dict(hidden_states=torch.randn(batch, 16, latent, latent, dtype=dtype, device=device),
                    encoder_hidden_states=text, pooled_projections=torch.randn(batch, 2048, dtype=dtype, device=device),
                    timestep=t * 1000)
    tokens = (latent // 2) ** 2
    ids = torch.zeros(tokens, 3, device=device)
    ids[:, 1] = torch.arange(tokens, device=device) // (latent // 2)
    ids[:, 2] = torch.arange(tokens, device=device) % (latent // 2)
    common = dict(hidden_states=torch.randn(batch, tokens, 64, dtype=dtype, device=device), encoder_hidden_states=text,
                  timestep=t, img_ids=ids, txt_ids=torch.zeros(spec["text_tokens"], 3, device=device))
    if spec["kind"] == "flux":
        common.update(pooled_projections=torch.randn(batch, 768, dtype=dtype, device=device),
                      guidance=torch.full((batch,), 3.5, dtype=dtype, device=device))
    return common


def time_steps(model, kwargs: dict, repeats: int, device: str) -> list[float]:
    times = []
    with torch.inference_mode():
        model(**kwargs)  # warm-up
        for _ in range(repeats):
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            started = time.perf_counter()
            model(**kwargs)
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            times.append(time.perf_counter() - started)
    return times


def params_bytes(name: str, dtype: torch.dtype) -> int:
    with torch.device("meta"):
        import diffusers

        model = getattr(diffusers, FAMILIES[name]["cls"])(**FAMILIES[name]["config"])
    return sum(p.numel() for p in model.parameters()) * torch.finfo(dtype).bits // 8


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--family", choices=sorted(FAMILIES), required=True)
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--memory-gb", type=float, default=None, help="memory to plan for (default: this machine's)")
    parser.add_argument("--reduced", action="store_true", help="extrapolate from two reduced depths even if the model fits")
    args = parser.parse_args()
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("no CUDA device here; skipped (the CPU numbers are the --device cpu run)")
        return 0
    dtype = torch.bfloat16
    spec = FAMILIES[args.family]
    full_bytes = params_bytes(args.family, dtype)
    if args.memory_gb is not None:
        budget = args.memory_gb * GB
    elif args.device.startswith("cuda"):
        budget = torch.cuda.mem_get_info()[0]
    else:
        budget = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")
    kwargs = inputs(args.family, dtype, args.device)
    result: dict = {"family": args.family, "device": args.device, "dtype": "bf16", "size": spec["size"],
                    "batch": spec["batch"], "text_tokens": spec["text_tokens"], "full_weights_bytes": full_bytes,
                    "machine": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
                    "note": "CPU shared with other work while measured" if args.device == "cpu" else "",
                    "loadavg_start": list(os.getloadavg())}
    if full_bytes * 1.3 < budget and not args.reduced:
        model = build(args.family, {}, dtype, args.device)
        times = time_steps(model, kwargs, args.repeats, args.device)
        result.update(seconds_per_step=statistics.median(times), extrapolated=False, runs=times)
    else:
        # Two reduced depths, k and 2k blocks of each kind: step = fixed + k * per_block_set.
        full_blocks = spec["blocks"]
        # One "set" keeps the full model's ratio of block kinds (FLUX.1: 1 double + 2 single; 19 sets in all).
        first = {k: max(1, v // min(full_blocks.values())) for k, v in full_blocks.items()}
        second = {k: 2 * v for k, v in first.items()}
        # Both depths built, warmed, then timed turn by turn (A, B, A, B...) so a busy neighbour slows them alike.
        reduced_models = [build(args.family, scale, dtype, args.device) for scale in (first, second)]
        for model in reduced_models:
            time_steps(model, kwargs, 1, args.device)
        rounds: list[list[float]] = [[], []]
        for _ in range(args.repeats):
            for index, model in enumerate(reduced_models):
                rounds[index] += time_steps(model, kwargs, 1, args.device)[-1:]
        measured = [statistics.median(r) for r in rounds]
        del reduced_models
        gc.collect()
        per_set = measured[1] - measured[0]
        fixed = measured[0] - per_set
        sets = min(full_blocks.values()) / min(first.values())
        if fixed < -0.1 * measured[0]:
            # Per-block time cannot exceed the whole step: the two runs were disturbed (a shared CPU); say so.
            result["warning"] = (f"the two depths do not fit a line (fixed part {fixed:.1f} s < 0): the machine was busy; "
                                 "the extrapolation is rough")
        result.update(seconds_per_step=fixed + sets * per_set, extrapolated=True,
                      reduced={"blocks": [first, second], "seconds": measured},
                      how=("asked for (--reduced)" if full_bytes * 1.3 < budget else f"too big for {budget / GB:.0f} GB here")
                          + f": measured with {first} and {second} blocks, extrapolated linearly to {full_blocks}")
    result["loadavg_end"] = list(os.getloadavg())
    if args.device.startswith("cuda"):
        result["peak_bytes"] = torch.cuda.max_memory_allocated()
    else:
        result["peak_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    RESULTS.mkdir(exist_ok=True)
    stem = RESULTS / f"family_step-{args.family}-{args.device.split(':')[0]}"
    stem.with_suffix(".json").write_text(json.dumps(result, indent=2))
    lines = [f"# {args.family} transformer, one step at {spec['size']}² (bf16, {args.device}, batch {spec['batch']})", "",
             f"- seconds per step: **{result['seconds_per_step']:.1f}**" + (" (extrapolated)" if result["extrapolated"] else ""),
             f"- full weights: {full_bytes / GB:.1f} GB"]
    if result.get("how"):
        lines.append(f"- {result['how']}")
        blocks, seconds = result["reduced"]["blocks"], result["reduced"]["seconds"]
        lines.append(f"- measured (median of {args.repeats}): " + ", ".join(f"{b}: {s:.1f} s" for b, s in zip(blocks, seconds)))
    if result.get("warning"):
        lines.append(f"- warning: {result['warning']}")
    peak = result.get("peak_bytes") or result.get("peak_rss_bytes")
    lines.append(f"- peak memory of this run: {peak / GB:.1f} GB")
    if spec.get("note") and result["extrapolated"]:
        lines.append(f"- {spec['note']}")
    if result["note"]:
        load = ", ".join(f"{x:.1f}" for x in result["loadavg_start"] + result["loadavg_end"][:1])
        lines.append(f"- {result['note']} (load average 1/5/15 min at start, 1 min at end: {load}; {result['cpu_count']} cores)")
    stem.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
