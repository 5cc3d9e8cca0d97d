"""Seconds per denoising step at native size for each DiT family's real-size transformer (random weights), and peak memory.

Architectures are the real configs (below) with random weights: speed does not depend on weight values, and
nothing is downloaded. A transformer too big for this machine's memory (FLUX.1 is 23.8 GB in bf16) is built
with fewer blocks; the step time of the full model is extrapolated linearly from two reduced depths (the
blocks are identical, so time is fixed part + blocks x per-block time) and says so in the result. Inputs are
what the pipeline feeds the transformer at native size: packed image tokens, the text encoder's tokens at
the family's token limit (the padded length where the pipeline pads; a 128-token prompt where it passes only the
prompt's own tokens: Qwen-Image, Z-Image), pooled embeddings, timestep (and distilled guidance). CFG families run
batch 2 (the two passes a step makes, whether the pipeline batches them or calls twice). A family whose block kinds
differ in size (FLUX.2 dev) is measured at 1+0, 0+1 and 1+1 blocks, and the time per block of each kind fitted by
least squares. Every fit also measures the model with no blocks (its fixed part) and flags a depth off the fit.
Default steps per family come from the project's family registry (`registry` below: family id and variant).

    .venv/bin/python benchmarks/family_step.py --table   # benchmarks/results/family_step-cpu.md from every CPU result

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
        blocks={"num_layers": 19, "num_single_layers": 38}, size=1024, text_tokens=512, batch=1, kind="flux",
        registry=("flux", None)),
    "chroma": dict(
        cls="ChromaTransformer2DModel",
        config=dict(patch_size=1, in_channels=64, num_layers=19, num_single_layers=38, attention_head_dim=128,
                    num_attention_heads=24, joint_attention_dim=4096, axes_dims_rope=(16, 56, 56)),
        blocks={"num_layers": 19, "num_single_layers": 38}, size=1024, text_tokens=512, batch=2, kind="chroma",
        registry=("chroma", None)),
    "sd3-large": dict(
        cls="SD3Transformer2DModel",
        config=dict(sample_size=128, patch_size=2, in_channels=16, num_layers=38, attention_head_dim=64,
                    num_attention_heads=38, joint_attention_dim=4096, caption_projection_dim=2432,
                    pooled_projection_dim=2048, out_channels=16, pos_embed_max_size=192, qk_norm="rms_norm"),
        blocks={"num_layers": 38}, size=1024, text_tokens=333, batch=2, kind="sd3", registry=("sd3", None)),
    "sd3-medium": dict(
        cls="SD3Transformer2DModel",
        config=dict(sample_size=128, patch_size=2, in_channels=16, num_layers=24, attention_head_dim=64,
                    num_attention_heads=24, joint_attention_dim=4096, caption_projection_dim=1536,
                    pooled_projection_dim=2048, out_channels=16, pos_embed_max_size=384, qk_norm="rms_norm",
                    dual_attention_layers=tuple(range(13))),
        blocks={"num_layers": 24}, size=1024, text_tokens=333, batch=2, kind="sd3", registry=("sd3", None),
        note="its first 13 layers have a second attention (MMDiT-X); the reduced depths are such layers, so the "
             "extrapolation to 24 layers is an upper bound"),
    # FLUX.2: 32-channel latents packed 2x2 (128 in-channels), 4-axis (T, H, W, L) position ids, the text encoder's
    # three hidden layers stacked (Mistral Small 3.1: 3 x 5120; Qwen3-4B: 3 x 2560), padded to 512 tokens.
    "flux2-dev": dict(
        cls="Flux2Transformer2DModel",
        config=dict(patch_size=1, in_channels=128, num_layers=8, num_single_layers=48, attention_head_dim=128,
                    num_attention_heads=48, joint_attention_dim=15360, timestep_guidance_channels=256, mlp_ratio=3.0,
                    axes_dims_rope=(32, 32, 32, 32), rope_theta=2000, guidance_embeds=True),
        blocks={"num_layers": 8, "num_single_layers": 48}, size=1024, text_tokens=512, text_dim=15360, batch=1,
        kind="flux2", registry=("flux2", None),
        # A double block is twice a single's size here; 1+6 and 2+12 blocks would not fit beside each other in 24 GB
        # (and 2+1 beside 1+2 leaves too little room: memory pressure slowed the larger ones). With no blocks as well.
        depths=[{"num_layers": 1, "num_single_layers": 0}, {"num_layers": 0, "num_single_layers": 1},
                {"num_layers": 1, "num_single_layers": 1}]),
    "flux2-klein": dict(
        cls="Flux2Transformer2DModel",
        config=dict(patch_size=1, in_channels=128, num_layers=5, num_single_layers=20, attention_head_dim=128,
                    num_attention_heads=24, joint_attention_dim=7680, timestep_guidance_channels=256, mlp_ratio=3.0,
                    axes_dims_rope=(32, 32, 32, 32), rope_theta=2000, guidance_embeds=False),
        blocks={"num_layers": 5, "num_single_layers": 20}, size=1024, text_tokens=512, text_dim=7680, batch=1,
        kind="flux2", registry=("flux2-klein", "distilled"),
        note="klein 4B as released: step-distilled, one pass per step"),
    # Qwen-Image: 60 MMDiT blocks at 3072 wide; Qwen2.5-VL-7B's last hidden layer (3584) for the prompt's own tokens.
    "qwen-image": dict(
        cls="QwenImageTransformer2DModel",
        config=dict(patch_size=2, in_channels=64, out_channels=16, num_layers=60, attention_head_dim=128,
                    num_attention_heads=24, joint_attention_dim=3584, guidance_embeds=False, axes_dims_rope=(16, 56, 56)),
        blocks={"num_layers": 60}, size=1024, text_tokens=128, text_dim=3584, batch=2, kind="qwen",
        registry=("qwen-image", None), note="true CFG: two passes per step (batch 2 here)"),
    # Z-Image: a 6B single-stream DiT (30 layers at 3840, plus 2 noise- and 2 caption-refiner layers), Qwen3-4B (2560).
    "z-image": dict(
        cls="ZImageTransformer2DModel",
        config=dict(all_patch_size=(2,), all_f_patch_size=(1,), in_channels=16, dim=3840, n_layers=30,
                    n_refiner_layers=2, n_heads=30, n_kv_heads=30, norm_eps=1e-5, qk_norm=True, cap_feat_dim=2560,
                    rope_theta=256.0, t_scale=1000.0, axes_dims=[32, 48, 48], axes_lens=[1024, 512, 512]),
        blocks={"n_layers": 30}, size=1024, text_tokens=128, text_dim=2560, batch=2, kind="zimage",
        registry=("z-image", None), note="Z-Image base: CFG, two passes per step"),
}
# Variants with their base's architecture: only the passes per step and the registry entry differ.
FAMILIES["flux2-klein-base"] = {**FAMILIES["flux2-klein"], "batch": 2, "registry": ("flux2-klein", None),
                                "note": "klein base 4B: real CFG, two passes per step"}
FAMILIES["z-image-turbo"] = {**FAMILIES["z-image"], "batch": 1, "registry": ("z-image", "turbo"),
                             "note": "Z-Image-Turbo: distilled, no CFG"}


def build(name: str, scale: dict[str, int], dtype: torch.dtype, device: str):
    import diffusers

    spec = FAMILIES[name]
    config = {**spec["config"], **scale}
    if "dual_attention_layers" in config:
        config["dual_attention_layers"] = tuple(i for i in config["dual_attention_layers"] if i < config["num_layers"])
    return construct(getattr(diffusers, spec["cls"]), config, dtype, device)


def construct(cls, config: dict, dtype: torch.dtype, device: str):
    """The model with random weights, allocated once (built on the meta device, then given memory)."""
    with torch.device("meta"):
        model = cls(**config)
    if any(isinstance(v, torch.Tensor) and v.is_meta for m in model.modules() for v in vars(m).values()):
        # Tensors kept as plain attributes (Qwen-Image's RoPE tables) are not moved by to_empty: build for real.
        model = cls(**config).to(device=device, dtype=dtype)
    else:
        model = model.to_empty(device=device).to(dtype)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.02)
    return model.eval()


def inputs(name: str, dtype: torch.dtype, device: str, size: int | None = None) -> dict:
    spec = FAMILIES[name]
    batch, latent, tokens_text = spec["batch"], (size or spec["size"]) // 8, spec["text_tokens"]
    text = torch.randn(batch, tokens_text, spec.get("text_dim", 4096), dtype=dtype, device=device)
    t = torch.full((batch,), 0.5, dtype=dtype, device=device)
    side = latent // 2  # 2x2 latent patches: 64x64 image tokens at 1024²
    if spec["kind"] == "flux2":
        # pipeline_flux2*: packed latents (B, H*W, 4 * 32), ids (B, L, 4) as (T, H, W, L): image (0, h, w, 0), text (0, 0, 0, l).
        img_ids = torch.cartesian_prod(torch.arange(1), torch.arange(side), torch.arange(side), torch.arange(1))
        txt_ids = torch.cartesian_prod(torch.arange(1), torch.arange(1), torch.arange(1), torch.arange(tokens_text))
        guidance = torch.full((batch,), 4.0, dtype=dtype, device=device) if spec["config"]["guidance_embeds"] else None
        return dict(hidden_states=torch.randn(batch, side * side, 128, dtype=dtype, device=device), encoder_hidden_states=text,
                    timestep=t, guidance=guidance, img_ids=img_ids.expand(batch, -1, -1).to(device),
                    txt_ids=txt_ids.expand(batch, -1, -1).to(device))
    if spec["kind"] == "qwen":
        # pipeline_qwenimage: packed latents (B, H*W, 4 * 16), one (frames, h, w) per image; a prompt with no padding
        # has no mask (the pipeline drops an all-ones mask).
        return dict(hidden_states=torch.randn(batch, side * side, 64, dtype=dtype, device=device), encoder_hidden_states=text,
                    encoder_hidden_states_mask=None, timestep=t, img_shapes=[[(1, side, side)]] * batch)
    if spec["kind"] == "zimage":
        # pipeline_z_image: one (C, frames, H, W) latent and one (tokens, dim) caption per image, as lists.
        return dict(x=[torch.randn(16, 1, latent, latent, dtype=dtype, device=device) for _ in range(batch)], t=t,
                    cap_feats=list(text.unbind(0)))
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
    if spec["kind"] == "chroma":
        # pipeline_chroma: T5 padded to 512 with its mask, extended by ones over the image tokens (masked attention).
        text_mask = (torch.arange(tokens_text, device=device) <= 76).to(dtype).expand(batch, -1)  # 76 tokens + 1 pad
        common["attention_mask"] = torch.cat([text_mask, torch.ones(batch, tokens, dtype=torch.bool, device=device)], 1)
    return common


def check(name: str) -> int:
    """One forward of the family's layout at tiny width (2 heads, one block of each kind) and 128²: the inputs fit."""
    for blocks in (1, 0):  # one block of each kind, and none (the fixed part the reduced depths are fitted with)
        check_depth(name, blocks)
    return 0


def check_depth(name: str, blocks: int) -> None:
    import diffusers

    spec = FAMILIES[name]
    config = {**spec["config"], **{k: blocks for k in spec["blocks"]}}
    if "dual_attention_layers" in config:
        config["dual_attention_layers"] = (0,) if blocks else ()
    if "num_attention_heads" in config:
        config["num_attention_heads"] = 2
    if "caption_projection_dim" in config:
        config["caption_projection_dim"] = 2 * config["attention_head_dim"]
    if "n_heads" in config:  # Z-Image: width = heads x 128 (its RoPE axes sum to 128)
        config.update(dim=256, n_heads=2, n_kv_heads=2, n_refiner_layers=1)
    model = construct(getattr(diffusers, spec["cls"]), config, torch.bfloat16, "cpu")
    kwargs = inputs(name, torch.bfloat16, "cpu", size=128)
    with torch.inference_mode():
        out = model(**kwargs, return_dict=False)[0]
    shapes = [tuple(o.shape) for o in out] if isinstance(out, list) else tuple(out.shape)
    print(f"{name}: tiny {spec['cls']} with {blocks} block(s) of each kind: forward ok, output {shapes}")


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


def default_steps(name: str) -> int:
    """The family's default steps from the project's family registry (the variant's, where the row is one)."""
    from imgtools_mcp.engine.families import registry

    family_id, variant_id = FAMILIES[name]["registry"]
    spec = registry.get(family_id)
    variant = next((v for v in spec.variants if v.id == variant_id), None)
    if variant_id is not None and (variant is None or variant.default_steps is None):
        raise SystemExit(f"{family_id} has no variant {variant_id!r} with default steps in the registry")
    return variant.default_steps if variant is not None else spec.default_steps


def misfit(fitted: list[float], measured: list[float]) -> float:
    """The largest distance of a measured depth from the fitted line, as a share of the longest time."""
    return max(abs(f - m) for f, m in zip(fitted, measured)) / max(measured)


def refit(result: dict) -> float:
    """A stored result's misfit, recomputed from its depths (results written before the check have none)."""
    kinds = list(FAMILIES[result["family"]]["blocks"])
    depths, measured = result["reduced"]["blocks"], result["reduced"]["seconds"]
    rows = torch.tensor([[1.0] + [float(d[k]) for k in kinds] for d in depths], dtype=torch.float64)
    fit = torch.linalg.lstsq(rows, torch.tensor(measured, dtype=torch.float64)[:, None], driver="gelsd").solution
    return misfit((rows @ fit)[:, 0].tolist(), measured)


def write_table(device: str) -> str:
    """One table from every results/family_step-<family>-<device>.json: step time, default steps, minutes per image."""
    rows = []
    for path in sorted(RESULTS.glob(f"family_step-*-{device}.json")):
        result = json.loads(path.read_text())
        if result.get("family") not in FAMILIES:
            continue
        steps = default_steps(result["family"])
        minutes = result["seconds_per_step"] * steps / 60
        peak = result.get("peak_rss_bytes") or result.get("peak_bytes") or 0
        load = result.get("loadavg_start"), result.get("loadavg_end")
        load_text = f"{load[0][0]:.1f} → {load[1][0]:.1f}" if all(load) else "not recorded"
        how = "extrapolated from " + " / ".join(
            "+".join(str(v) for v in blocks.values()) for blocks in result["reduced"]["blocks"]) + " blocks" \
            if result["extrapolated"] else "measured (full model)"
        if result["extrapolated"] and (refit(result) > 0.10 or result.get("fixed_seconds", 0) < 0):
            how += f" (rough: the depths are off a line by {refit(result):.0%} of the longest time)"
        elif result["extrapolated"] and len(result["reduced"]["blocks"]) == 2:
            how += " (two depths: no check of the line)"
        rows.append((minutes, f"| {result['family']} | {result['full_weights_bytes'] / GB:.1f} | {result['batch']} | "
                              f"{result['seconds_per_step']:.0f} | {steps} | {minutes:.0f} | {peak / GB:.1f} | {how} | "
                              f"{load_text} |"))
    machine = json.loads(next(RESULTS.glob(f"family_step-*-{device}.json")).read_text())
    lines = [f"# Seconds per denoising step by family at 1024² ({device}, bf16)", "",
             "Each family's real-size transformer with random weights (`benchmarks/family_step.py`; rerun a row with "
             f"`--family NAME`, this table with `--table`). Minutes per image = s/step x the family's default steps "
             "(from the family registry), the transformer only: the text encoder runs once per prompt and the VAE "
             "once per image, both extra. Passes: 2 where a step runs the transformer twice (CFG). Peak RAM is this "
             "run's (the reduced-depth model for extrapolated rows); running a model needs at least its weights.",
             "", "| family | weights GB (bf16) | passes/step | s/step | default steps | ≈ min/image | peak RAM GB "
             "(this run) | how | load avg (1 min, start → end) |", "|---|---|---|---|---|---|---|---|---|"]
    lines += [row for _, row in sorted(rows)]
    lines += ["", f"Machine: {machine.get('machine')}, {machine.get('cpu_count')} cores, shared with other work while "
              "measured (the load average column): the times are upper bounds for an idle machine of this kind."]
    text = "\n".join(lines) + "\n"
    (RESULTS / f"family_step-{device}.md").write_text(text)
    return text


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--family", choices=sorted(FAMILIES))
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--memory-gb", type=float, default=None, help="memory to plan for (default: this machine's)")
    parser.add_argument("--reduced", action="store_true", help="extrapolate from two reduced depths even if the model fits")
    parser.add_argument("--check", action="store_true",
                        help="one forward of a tiny-width, one-block version at 128² (checks the inputs; writes nothing)")
    parser.add_argument("--table", action="store_true", help="write results/family_step-<device>.md from every result")
    args = parser.parse_args()
    if args.table:
        print(write_table(args.device.split(":")[0]))
        return 0
    if args.family is None:
        parser.error("--family is required (or --table)")
    if args.check:
        return check(args.family)
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
        # Reduced depths (by default k and 2k blocks of each kind): step = fixed + sum over kinds of blocks x per-block time.
        full_blocks = spec["blocks"]
        kinds = list(full_blocks)
        if "depths" in spec:
            depths = list(spec["depths"])
        else:
            # One "set" keeps the full model's ratio of block kinds (FLUX.1: 1 double + 2 single; 19 sets in all).
            first = {k: max(1, v // min(full_blocks.values())) for k, v in full_blocks.items()}
            depths = [first, {k: 2 * v for k, v in first.items()}]
        # No blocks at all measures the fixed part (embedders, refiners, output) directly, in a second or so; with
        # it the fit leans on the deepest model, whose time a busy neighbour disturbs least in proportion.
        depths.insert(0, {k: 0 for k in kinds})
        # All depths built, warmed, then timed turn by turn (A, B, A, B...) so a busy neighbour slows them alike.
        reduced_models = [build(args.family, scale, dtype, args.device) for scale in depths]
        for model in reduced_models:
            time_steps(model, kwargs, 1, args.device)
        rounds: list[list[float]] = [[] for _ in depths]
        for _ in range(args.repeats):
            for index, model in enumerate(reduced_models):
                rounds[index] += time_steps(model, kwargs, 1, args.device)[-1:]
        measured = [statistics.median(r) for r in rounds]
        del reduced_models
        gc.collect()
        # Least squares (minimum norm: depths in a fixed ratio fit one time per set, which the full model also is).
        rows = torch.tensor([[1.0] + [float(d[k]) for k in kinds] for d in depths], dtype=torch.float64)
        fit = torch.linalg.lstsq(rows, torch.tensor(measured, dtype=torch.float64)[:, None], driver="gelsd").solution[:, 0]
        fixed = float(fit[0])
        seconds = float(torch.tensor([1.0] + [float(full_blocks[k]) for k in kinds], dtype=torch.float64) @ fit)
        fitted = (rows @ fit).tolist()
        worst = misfit(fitted, measured)
        if worst > 0.10:
            result["warning"] = (f"the depths do not fit a line (a depth is off the fit by {worst:.0%} of the longest "
                                 "time): the machine was busy; the extrapolation is rough")
        if fixed < -0.1 * measured[0]:
            # Per-block time cannot exceed the whole step: the runs were disturbed (a shared CPU); say so.
            result["warning"] = (f"the depths do not fit a line (fixed part {fixed:.1f} s < 0): the machine was busy; "
                                 "the extrapolation is rough")
        result.update(seconds_per_step=seconds, extrapolated=True, fixed_seconds=fixed,
                      reduced={"blocks": depths, "seconds": measured},
                      how=("asked for (--reduced)" if full_bytes * 1.3 < budget else f"too big for {budget / GB:.0f} GB here")
                          + f": measured with {' and '.join(map(str, depths))} blocks, extrapolated linearly to {full_blocks}")
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
