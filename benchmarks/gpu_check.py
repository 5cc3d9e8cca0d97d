"""GPU check: SD 1.5 / SDXL it/s and peak memory, and every memory plan under simulated 4/8/12 GiB budgets.

Parts (real-size architectures with random weights, built from the configs in unet_step.py; nothing downloaded):
1. speed: it/s at the family's native size, batch 1 and 4, fp16 and bf16; plain eager diffusers, the same
   in channels-last memory format (which the engine does not use: these rows are why), and the engine's torch
   fast path (fused QKV, the whole UNet compiled with CUDA graphs: IMGTOOLS_TORCH_COMPILE=cudagraphs); peak memory of each. it/s is read from step timestamps (synchronised), excluding the first step.
2. memory plans: each MemoryPlan applied with the engine's own apply_memory_plan, timed with the VAE decode,
   its peak allocated memory measured; then for budgets of 4, 8 and 12 GiB: which plans fit, the fastest that
   fits, the planner's pick (choose_memory_plan on the device facts with that budget), and a run of the pick
   under torch.cuda.set_per_process_memory_fraction to show it really fits.

3. a DiT (--dit, FLUX.1's 12B layout by default, from family_step.py): seconds per transformer step at 1024² for
   plain diffusers bf16 eager; the engine's fast path (fused QKV, compiled whole with CUDA graphs); the same with
   the engine's fp8 weights (torchao_fp8, weight-only) and with fp8 activations too (torchao's dynamic float8, a
   candidate the engine does not use yet); and bf16 with block-level group offload, what a GPU too small for
   the bf16 weights would otherwise run, against the fp8 weights resident. Each row's first call is timed on
   its own: for a compiled row that is the first request's latency after load.

The first request through the server after a restart, with and without IMGTOOLS_WARMUP (which compiles the
native size at start), is benchmarks/first_request.py --device cuda, run beside this in the same device session.

Without CUDA it prints why and exits 0 (results already in benchmarks/results stay), so anyone can run it anywhere;
--cpu-smoke runs the speed part on the CPU at a small size to check the script, writing nothing.

    python benchmarks/gpu_check.py [--families sd15 sdxl] [--deadline-s 420] [--no-compile]

Writes benchmarks/results/gpu_check.json and .md (and to $OUT when that is set).
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import os
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch

from common import CLIP_L, FAMILIES, OPENCLIP_BIGG, RESULTS, SD_VAE, log

GIB = 1024**3
BUDGETS_GIB = (4, 8, 12)
DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}


class Deadline:
    def __init__(self, seconds: float) -> None:
        self.end = time.monotonic() + seconds

    def left(self) -> float:
        return self.end - time.monotonic()


def build_pipeline(family: str, dtype: torch.dtype, device: str, tokenizer_dir: Path) -> Any:
    """A full pipeline of the real architecture with random weights, built directly on `device`."""
    from diffusers import (
        AutoencoderKL,
        EulerDiscreteScheduler,
        StableDiffusionPipeline,
        StableDiffusionXLPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    from imgtools_mcp.testing.tiny_sd import write_clip_tokenizer

    if not (tokenizer_dir / "vocab.json").exists():
        write_clip_tokenizer(tokenizer_dir)
    tokenizer = CLIPTokenizer.from_pretrained(tokenizer_dir)
    ids = {"bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id, "pad_token_id": tokenizer.eos_token_id}
    scheduler = EulerDiscreteScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", timestep_spacing="leading", steps_offset=1
    )
    sdxl = family == "sdxl"
    torch.manual_seed(0)
    with torch.device(device):
        unet = UNet2DConditionModel.from_config(FAMILIES[family]["unet"]).to(dtype)
        vae_config = {**SD_VAE, **({"sample_size": 1024, "scaling_factor": 0.13025, "force_upcast": True} if sdxl else {})}
        vae = AutoencoderKL.from_config(vae_config).to(dtype)
        text = CLIPTextModel(CLIPTextConfig(**CLIP_L, **ids)).to(dtype)
        if not sdxl:
            pipe = StableDiffusionPipeline(vae=vae, text_encoder=text, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
                                           safety_checker=None, feature_extractor=None, requires_safety_checker=False)  # fmt: skip
        else:
            text2 = CLIPTextModelWithProjection(CLIPTextConfig(**OPENCLIP_BIGG, **ids)).to(dtype)
            pipe = StableDiffusionXLPipeline(vae=vae, text_encoder=text, text_encoder_2=text2, tokenizer=tokenizer,
                                             tokenizer_2=tokenizer, unet=unet, scheduler=scheduler)  # fmt: skip
    pipe.set_progress_bar_config(disable=True)
    return pipe


def timed_run(pipe: Any, size: int, batch: int, steps: int, output_type: str = "latent") -> dict[str, float]:
    """One generate: it/s from synchronised step timestamps (first step excluded), total seconds, peak memory."""
    stamps: list[float] = []

    def on_step(pipeline: Any, step: int, timestep: Any, kwargs: dict) -> dict:
        sync()
        stamps.append(time.perf_counter())
        return {}

    cuda = torch.cuda.is_available()
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    sync()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    with torch.inference_mode():
        pipe(prompt="a lighthouse at dusk", num_inference_steps=steps, guidance_scale=7.0, width=size, height=size,
             num_images_per_prompt=batch, generator=torch.Generator("cpu").manual_seed(0), output_type=output_type,
             callback_on_step_end=on_step)  # fmt: skip
    sync()
    total = time.perf_counter() - started
    its = (len(stamps) - 1) / (stamps[-1] - stamps[0]) if len(stamps) > 1 else float("nan")
    peaks = (torch.cuda.max_memory_allocated() / GIB, torch.cuda.max_memory_reserved() / GIB) if cuda else (0.0, 0.0)
    return {"it_per_s": its, "total_s": total, "peak_allocated_gib": peaks[0], "peak_reserved_gib": peaks[1]}


def speed_part(
    family: str, args: argparse.Namespace, deadline: Deadline, facts: Any, tok: Path, *, dtypes: tuple[str, ...], compile_only: bool
) -> list[dict]:
    """it/s of eager diffusers and the engine's torch setup (or only the compiled setup) at batch 1 and 4."""
    from imgtools_mcp.engine.backends.fast_path import plan_fast_path
    from imgtools_mcp.engine.backends.torch_backend import TorchBackend

    rows: list[dict] = []
    size = args.size or FAMILIES[family]["size"]
    device = "cuda" if torch.cuda.is_available() else "cpu"
    for dtype_name in dtypes:
        if deadline.left() < 60:
            rows.append({"family": family, "dtype": dtype_name, "skipped": "deadline"})
            continue
        log(f"{family} {dtype_name}: building")
        pipe = build_pipeline(family, DTYPES[dtype_name], device, tok)
        if compile_only:
            setups = ["", "engine torch backend + fast path (fused QKV, CUDA graphs)"]
        else:
            setups = ["eager (plain diffusers)", "channels-last"]
        for setup in setups:
            if setup == "channels-last":
                started = time.perf_counter()
                for module in (pipe.unet, pipe.vae):
                    module.to(memory_format=torch.channels_last)
                setup_s = time.perf_counter() - started
            elif "fast path" in setup:
                started = time.perf_counter()
                TorchBackend(SimpleNamespace(), facts).setup_pipeline(
                    pipe, "sdxl" if family == "sdxl" else "sd1", dtype_name, fast_path=plan_fast_path(facts, "cudagraphs"))
                setup_s = time.perf_counter() - started
            else:
                setup_s = 0.0
            if not setup:
                continue  # the compiled setup alone: no eager rows again
            for batch in (1, 4):
                if deadline.left() < 30:
                    rows.append({"family": family, "dtype": dtype_name, "setup": setup, "batch": batch, "skipped": "deadline"})
                    continue
                warm_started = time.perf_counter()
                timed_run(pipe, size, batch, 2)  # warm-up (and compilation, for the compiled setup)
                warm_s = time.perf_counter() - warm_started
                row = {"family": family, "dtype": dtype_name, "setup": setup, "batch": batch, "size": size,
                       **timed_run(pipe, size, batch, args.steps), "warmup_s": warm_s, "setup_s": setup_s}  # fmt: skip
                log(f"  {setup} batch {batch}: {row['it_per_s']:.2f} it/s, peak {row['peak_allocated_gib']:.2f} GiB")
                rows.append(row)
        del pipe
        gc.collect()
        if device == "cuda":
            torch.cuda.empty_cache()
        torch._dynamo.reset()
    return rows


def plans_part(family: str, args: argparse.Namespace, deadline: Deadline, facts: Any, tok: Path) -> dict:
    from imgtools_mcp.engine.choice import choose_dtype
    from imgtools_mcp.engine.memory import (
        MemoryPlan,
        apply_memory_plan,
        choose_memory_plan,
        estimate_activation_bytes,
        footprint_of,
    )

    size = FAMILIES[family]["size"]
    dtype_name = choose_dtype(facts).value
    pipe = build_pipeline(family, DTYPES[dtype_name], "cpu" if args.build_on_cpu else "cuda", tok)
    footprint = footprint_of(pipe)
    measured: dict[str, dict] = {}
    for plan in MemoryPlan:
        if deadline.left() < 45:
            measured[plan.value] = {"skipped": "deadline"}
            continue
        with torch.inference_mode():  # as the engine does: weights moved by offload hooks are inference tensors
            apply_memory_plan(pipe, plan, "cuda")
        gc.collect()
        torch.cuda.empty_cache()
        timed_run(pipe, size, 1, 2, output_type="np")  # warm-up: the first offload pass pins and moves memory
        row = timed_run(pipe, size, 1, args.plan_steps, output_type="np")
        measured[plan.value] = row
        log(f"{family} plan {plan.value}: {row['it_per_s']:.2f} it/s, {row['total_s']:.1f} s, peak {row['peak_allocated_gib']:.2f} GiB")
    total = torch.cuda.get_device_properties(0).total_memory
    budgets = []
    for gib in BUDGETS_GIB:
        budget = gib * GIB
        # Simulated card: this much memory in total, all of it free (the CUDA context is outside the allocator).
        card = dataclasses.replace(facts, total_memory_bytes=budget, free_memory_bytes=budget)
        pick = choose_memory_plan(card, footprint, estimate_activation_bytes(family if family != "sd15" else "sd1",
                                                                             size, size, 1, DTYPES[dtype_name].itemsize))
        fitting = {p: r for p, r in measured.items() if "peak_reserved_gib" in r and r["peak_reserved_gib"] * GIB <= budget}
        fastest = max(fitting, key=lambda p: fitting[p]["it_per_s"]) if fitting else None
        entry: dict[str, Any] = {"budget_gib": gib, "fits": sorted(fitting), "fastest_fitting": fastest,
                                 "planner_pick": pick.value.value, "planner_reason": pick.reason}  # fmt: skip
        if deadline.left() > 45:
            # Run the pick with the allocator capped at the budget: it must not run out of memory.
            torch.cuda.set_per_process_memory_fraction(min(1.0, budget / total))
            try:
                with torch.inference_mode():
                    apply_memory_plan(pipe, pick.value, "cuda")
                gc.collect()
                torch.cuda.empty_cache()
                entry["pick_under_cap"] = timed_run(pipe, size, 1, 2, output_type="np")
            except torch.OutOfMemoryError as exc:
                entry["pick_under_cap"] = {"out_of_memory": str(exc).splitlines()[0][:200]}
            finally:
                torch.cuda.set_per_process_memory_fraction(1.0)
        log(f"{family} budget {gib} GiB: pick {entry['planner_pick']}, fastest fitting {fastest}")
        budgets.append(entry)
    del pipe
    gc.collect()
    torch.cuda.empty_cache()
    return {"family": family, "dtype": dtype_name, "size": size, "footprint_gib": footprint.total_bytes / GIB,
            "plans": measured, "budgets": budgets}  # fmt: skip


def dit_part(args: argparse.Namespace, deadline: Deadline, facts: Any) -> list[dict]:
    """Seconds per step of a DiT family's real-size transformer under each setup (see the module docstring)."""
    from family_step import FAMILIES as DITS
    from family_step import build, inputs

    from imgtools_mcp.engine.backends.fast_path import apply_fast_path, plan_fast_path
    from imgtools_mcp.engine.quantize import quantize_module

    cuda = torch.cuda.is_available()
    device = "cuda" if cuda else "cpu"
    name = args.dit
    spec = DITS[name]
    scale = {key: args.dit_blocks for key in spec["blocks"]} if args.dit_blocks is not None else {}
    size = args.size or spec["size"]
    quantized = "torchao_fp8" if cuda else "sdnq_int8"  # fp8 needs CUDA; the CPU smoke checks the path with int8

    def fp8_dynamic(model: torch.nn.Module) -> None:
        from torchao.quantization import Float8DynamicActivationFloat8WeightConfig, quantize_

        quantize_(model, Float8DynamicActivationFloat8WeightConfig())

    def group_offload(model: torch.nn.Module) -> None:
        model.enable_group_offload(onload_device=torch.device("cuda"), offload_device=torch.device("cpu"),
                                   offload_type="block_level", num_blocks_per_group=1, use_stream=True)  # fmt: skip

    setups: list[tuple[str, str, Any, bool]] = [  # label, where the weights are built, prepare(model), compile
        ("plain diffusers: bf16 eager", device, None, False),
        (f"engine: {quantized} weights, eager", device, lambda m: quantize_module(m, quantized), False),
    ]
    if cuda:
        setups += [
            ("engine fast path: bf16, fused QKV + CUDA graphs", device, None, True),
            (f"engine fast path: {quantized} weights + CUDA graphs", device, lambda m: quantize_module(m, quantized), True),
            ("candidate: fp8 weights and activations (torchao dynamic float8) + CUDA graphs", device, fp8_dynamic, True),
            ("bf16, block-level group offload (a GPU too small for bf16)", "cpu", group_offload, False),
        ]
    rows: list[dict] = []
    for label, build_on, prepare, compiled in setups:
        if deadline.left() < 120:
            rows.append({"family": name, "setup": label, "skipped": "deadline"})
            continue
        log(f"{name} {label}: building")
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        model = build(name, scale, torch.bfloat16, build_on)
        if prepare is not None:
            prepare(model)
        if compiled:
            apply_fast_path(SimpleNamespace(transformer=model), plan_fast_path(facts, "cudagraphs"))
        kwargs = inputs(name, torch.bfloat16, device, size)

        def step() -> float:
            if cuda:
                torch.cuda.synchronize()
            started = time.perf_counter()
            with torch.inference_mode():
                model(**kwargs)
            if cuda:
                torch.cuda.synchronize()
            return time.perf_counter() - started

        first_s = step()  # compiles, for a compiled row: what the first request after load waits
        times = [step() for _ in range(args.dit_steps)]
        row = {"family": name, "setup": label, "size": size, "blocks": scale or "all", "first_call_s": first_s,
               "s_per_step": sorted(times)[len(times) // 2],
               "peak_allocated_gib": torch.cuda.max_memory_allocated() / GIB if cuda else None}  # fmt: skip
        log(f"  {row['s_per_step']:.3f} s/step (first call {first_s:.1f} s)")
        rows.append(row)
        del model, kwargs
        gc.collect()
        if cuda:
            torch.cuda.empty_cache()
        torch._dynamo.reset()
    return rows


def table(report: dict) -> str:
    if report.get("skipped"):
        return f"# GPU check\n\nSkipped: {report['skipped']}\n"
    lines = [f"# GPU check on {report['device']}", "", f"torch {report['torch']}, diffusers {report['diffusers']}; "
             f"engine dtype choice: {report['dtype_choice']}", "",
             "| family | dtype | setup | batch | it/s | peak alloc GiB | warm-up s |", "|---|---|---|---:|---:|---:|---:|"]  # fmt: skip
    for row in report["speed"]:
        if "skipped" in row:
            lines.append(f"| {row['family']} | {row['dtype']} | {row.get('setup', '')} | {row.get('batch', '')} | skipped ({row['skipped']}) | | |")
            continue
        lines.append(f"| {row['family']} | {row['dtype']} | {row['setup']} | {row['batch']} | {row['it_per_s']:.2f} | "
                     f"{row['peak_allocated_gib']:.2f} | {row['warmup_s']:.1f} |")  # fmt: skip
    for part in report["plans"]:
        lines += ["", f"## Memory plans: {part['family']} {part['size']}², batch 1, {part['dtype']}, weights {part['footprint_gib']:.2f} GiB", "",
                  "| plan | it/s | total s (with decode) | peak reserved GiB |", "|---|---:|---:|---:|"]  # fmt: skip
        for plan, row in part["plans"].items():
            if "skipped" in row:
                lines.append(f"| {plan} | skipped | | |")
            else:
                lines.append(f"| {plan} | {row['it_per_s']:.2f} | {row['total_s']:.1f} | {row['peak_reserved_gib']:.2f} |")
        lines += ["", "| budget | fits | fastest fitting | planner pick | pick under cap |", "|---:|---|---|---|---|"]
        for b in part["budgets"]:
            cap = b.get("pick_under_cap", {})
            ran = "not run" if not cap else ("OOM" if "out_of_memory" in cap else f"ran, {cap['peak_reserved_gib']:.2f} GiB")
            lines.append(f"| {b['budget_gib']} GiB | {', '.join(b['fits']) or 'none'} | {b['fastest_fitting']} | {b['planner_pick']} | {ran} |")
    dit = report.get("dit") or []
    if dit:
        plain = next((r["s_per_step"] for r in dit if r.get("setup", "").startswith("plain") and "s_per_step" in r), None)
        lines += ["", f"## DiT: {dit[0]['family']} transformer (random weights), one step at {dit[0].get('size', '?')}²", "",
                  "| setup | s/step | × plain diffusers | first call s | peak alloc GiB |", "|---|---:|---:|---:|---:|"]  # fmt: skip
        for row in dit:
            if "skipped" in row:
                lines.append(f"| {row['setup']} | skipped ({row['skipped']}) | | | |")
                continue
            ratio = f"{plain / row['s_per_step']:.2f}×" if plain else ""
            peak = f"{row['peak_allocated_gib']:.1f}" if row["peak_allocated_gib"] is not None else ""
            lines.append(f"| {row['setup']} | {row['s_per_step']:.3f} | {ratio} | {row['first_call_s']:.1f} | {peak} |")
    for error in report.get("errors", []):
        lines.append(f"\nError: {error}")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--families", nargs="+", choices=sorted(FAMILIES), default=["sd15", "sdxl"])
    parser.add_argument("--plan-families", nargs="*", choices=sorted(FAMILIES), default=["sdxl"])
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--plan-steps", type=int, default=3)
    parser.add_argument("--deadline-s", type=float, default=420, help="stop starting new measurements after this")
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--build-on-cpu", action="store_true", help="build plan pipelines on the CPU (slower start)")
    parser.add_argument("--size", type=int, help="override the families' native size (smoke runs)")
    parser.add_argument("--cpu-smoke", action="store_true", help="run the speed part on the CPU to check this script")
    parser.add_argument("--dit", default="flux", help="the DiT family of the transformer rows (family_step.py's names)")
    parser.add_argument("--no-dit", dest="dit", action="store_const", const=None, help="skip the DiT rows")
    parser.add_argument("--dit-blocks", type=int, help="blocks of each kind (smoke runs; default: the real depth)")
    parser.add_argument("--dit-steps", type=int, default=5, help="timed transformer steps per DiT setup")
    args = parser.parse_args()
    outputs = [Path(os.environ["OUT"])] if os.environ.get("OUT") else []
    report: dict[str, Any]
    if not torch.cuda.is_available() and not args.cpu_smoke:
        # Printed, not written over benchmarks/results: a run on a CPU must not replace a GPU's results.
        report = {"skipped": "no CUDA device (torch.cuda.is_available() is False); nothing measured"}
        print(table(report))
        for folder in outputs:
            (folder / "gpu_check.json").write_text(json.dumps(report, indent=2))
        return
    if not args.cpu_smoke:
        RESULTS.mkdir(parents=True, exist_ok=True)
        outputs.append(RESULTS)
    import diffusers

    from imgtools_mcp.engine.choice import choose_dtype
    from imgtools_mcp.engine.device import probe

    deadline = Deadline(args.deadline_s)
    facts = probe("cuda" if torch.cuda.is_available() else "cpu")
    report = {"device": facts.name, "torch": torch.__version__, "diffusers": diffusers.__version__,
              "dtype_choice": choose_dtype(facts).value, "speed": [], "plans": [], "dit": []}  # fmt: skip
    scratch = tempfile.TemporaryDirectory(prefix="imgtools-gpu-")  # removed when the script ends
    tok = Path(scratch.name) / "tokenizer"

    def save() -> None:
        for folder in outputs:
            (folder / "gpu_check.json").write_text(json.dumps(report, indent=2, default=str))
            (folder / "gpu_check.md").write_text(table(report))

    def section(name: str, fn: Any) -> None:
        # One section failing (an OOM, a compile error) is recorded; the others still run and are saved.
        try:
            fn()
        except Exception as exc:  # noqa: BLE001 - a one-shot device run must report, not stop
            log(f"{name} failed: {type(exc).__name__}: {exc}")
            report.setdefault("errors", []).append(f"{name}: {type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}")
            if torch.cuda.is_available():
                torch.cuda.set_per_process_memory_fraction(1.0)
                torch.cuda.empty_cache()
        save()

    # Cheapest and most telling first, so a deadline cuts the compile rows rather than the memory plans.
    first, *rest = args.families
    section(f"speed {first}", lambda: report["speed"].extend(
        speed_part(first, args, deadline, facts, tok, dtypes=("bf16", "fp16"), compile_only=False)))
    if torch.cuda.is_available():
        for family in args.plan_families:
            if deadline.left() > 90:
                section(f"plans {family}", lambda f=family: report["plans"].append(plans_part(f, args, deadline, facts, tok)))
    for family in rest:
        section(f"speed {family}", lambda f=family: report["speed"].extend(
            speed_part(f, args, deadline, facts, tok, dtypes=("bf16", "fp16"), compile_only=False)))
    if args.dit:
        section(f"dit {args.dit}", lambda: report["dit"].extend(dit_part(args, deadline, facts)))
    if args.compile:
        for family in args.families:
            section(f"compile {family}", lambda f=family: report["speed"].extend(
                speed_part(f, args, deadline, facts, tok, dtypes=("bf16",), compile_only=True)))
    save()
    print(table(report))


if __name__ == "__main__":
    main()
