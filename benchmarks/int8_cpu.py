"""Seconds per UNet step of a real-size SD 1.5 UNet (random weights) on OpenVINO int8 vs OpenVINO bf16, and drift.

Variants, timed side by side in one process (turn by turn, medians after one warm-up each), at 512², UNet batch 2
(one image with classifier-free guidance):

- plain diffusers: torch fp32 eager (the baseline of benchmarks/unet_step.py);
- OpenVINO bf16, static shape: what the engine runs today;
- OpenVINO int8 weights (`nncf.compress_weights`, INT8_ASYM): the engine's `nncf_int8`, made the same way
  (imgtools_mcp.engine.backends.openvino_backend.compress_ir);
- OpenVINO int8 weights and activations: the engine's `nncf_w8a8` (openvino_int8.quantize), calibrated on the
  UNet inputs of the bf16 run kept the way the engine keeps a first request's (Int8Activations.keep, one held
  out), when --full (the default).

Drift: the same seed is denoised by each OpenVINO variant (DDIM, CFG 7.5) and the final latents, and their
decodes through the OpenVINO VAE decoder, are compared with the bf16 run (PSNR). Random weights only bound the
drift of a trained model: they show what the arithmetic loses, not how a trained model's images change.

The whole generate is composed from parts measured once (2 text encodes + N UNet steps + 1 VAE decode), as in
unet_step.py.

    flock /tmp/bench.lock timeout 1500 .venv/bin/python benchmarks/int8_cpu.py          # ~15-25 min on 2 cores
    .venv/bin/python benchmarks/int8_cpu.py --tiny                                    # a tiny UNet, seconds: checks the code

Writes benchmarks/results/int8_cpu.json and .md (int8_cpu-tiny.* with --tiny; a -no-amx suffix on a CPU without AMX).
"""

from __future__ import annotations

import argparse
import copy
import gc
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from common import CLIP_L, SD15_UNET, SD_VAE, log, no_amx_suffix, save_results
from unet_step import build_text_encoder, interleaved, openvino_call, summary, torch_unet_call

BATCH = 2
TOKENS = 77
TINY_UNET = {**SD15_UNET, "block_out_channels": [32, 64, 64, 64], "attention_head_dim": 2, "cross_attention_dim": 32,
             "norm_num_groups": 8}  # fmt: skip
TINY_VAE = {**SD_VAE, "block_out_channels": [32, 32, 32, 32], "norm_num_groups": 8}
TINY_CLIP = {**CLIP_L, "hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 2, "num_hidden_layers": 2,
             "projection_dim": 32}  # fmt: skip


def scheduler():
    from diffusers import DDIMScheduler

    # SD 1.5's noise schedule.
    return DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000,
                         clip_sample=False, set_alpha_to_one=False, steps_offset=1)  # fmt: skip


def denoise(call: Callable[[dict], np.ndarray], latents: np.ndarray, context: np.ndarray, steps: int,
            capture: list | None = None, guidance: float = 7.5) -> np.ndarray:  # fmt: skip
    """A DDIM loop with classifier-free guidance around an OpenVINO UNet; `capture` collects its inputs."""
    sched = scheduler()
    sched.set_timesteps(steps)
    x = torch.from_numpy(latents) * sched.init_noise_sigma
    for t in sched.timesteps:
        feeds = {"sample": np.concatenate([x.numpy()] * 2).astype(np.float32),
                 "timestep": np.asarray([float(t)], dtype=np.float32), "encoder_hidden_states": context}  # fmt: skip
        if capture is not None:
            capture.append({k: v.copy() for k, v in feeds.items()})
        out = torch.from_numpy(np.array(call(feeds), copy=True))
        uncond, cond = out.chunk(2)
        x = sched.step(uncond + guidance * (cond - uncond), t, x).prev_sample
    return x.numpy()


def run(args: argparse.Namespace) -> dict:
    import diffusers
    import nncf
    import openvino as ov
    from diffusers import AutoencoderKL, UNet2DConditionModel

    from imgtools_mcp.engine.backends.openvino_backend import (
        compile_options,
        compress_ir,
        convert_to_ir,
        traceable_decoder,
        traceable_unet,
    )
    from imgtools_mcp.engine.backends.openvino_int8 import Int8Activations, psnr_db, split_captured, unet_inputs
    from imgtools_mcp.engine.device import probe

    facts = probe("cpu")
    precision = "bf16" if facts.supports_bf16 else "f32"
    engine_dtype = torch.bfloat16 if facts.supports_bf16 else torch.float32
    unet_config = TINY_UNET if args.tiny else SD15_UNET
    size = 64 if args.tiny else args.size
    latent = size // 8
    workdir = Path(args.cache_dir)
    report: dict = {
        "size": size, "unet_batch": BATCH, "rounds": args.rounds, "steps": args.steps,
        "drift_steps": args.drift_steps, "tiny": args.tiny,
        "machine": {"cpu": facts.name, "cores": facts.cpu_cores, "bf16_native": facts.supports_bf16,
                    "cpu_flags": sorted(facts.cpu_features),
                    "python": platform.python_version(), "torch": torch.__version__, "diffusers": diffusers.__version__,
                    "openvino": ov.__version__, "nncf": nncf.__version__},
        "load_average_start": os.getloadavg(),
    }  # fmt: skip
    core = ov.Core()
    core.set_property({"CACHE_DIR": str(workdir / "compiled")})
    gen = torch.Generator().manual_seed(0)
    context = torch.randn(BATCH, TOKENS, unet_config["cross_attention_dim"], generator=gen).numpy()
    start_latents = torch.randn(1, 4, latent, latent, generator=gen).numpy()
    shapes = {"sample": [BATCH, 4, latent, latent], "timestep": [1], "encoder_hidden_states": [BATCH, TOKENS, context.shape[-1]]}

    def compile_static(model) -> object:
        model.reshape(shapes)
        return core.compile_model(model, "CPU", compile_options(precision))

    def build_unet32() -> torch.nn.Module:
        torch.manual_seed(0)  # the same random weights every time it is built
        return UNet2DConditionModel.from_config(unet_config).eval()

    log("building the UNet and converting it (the engine's dtype; fp32 too for the full int8)")
    times_s: dict[str, float] = {}
    unet32 = build_unet32()
    ir, ir32 = workdir / "unet-engine", workdir / "unet-fp32"
    times_s["convert_engine_dtype"] = convert_to_ir(*traceable_unet(copy.deepcopy(unet32).to(engine_dtype), sdxl=False), ir)
    if args.full:
        times_s["convert_fp32"] = convert_to_ir(*traceable_unet(unet32, sdxl=False), ir32)
    del unet32  # rebuilt for the plain-diffusers rows: the quantization below needs the memory
    gc.collect()
    bf16_name = f"openvino {precision} (quantize none)"
    bf16_call = compile_static(core.read_model(str(ir / "model.xml")))

    log(f"{precision} denoising run, {args.drift_steps} steps (reference latents; its inputs calibrate the full int8)")
    captured: list[dict] = []
    reference = denoise(lambda f: bf16_call(f)[0], start_latents, context, args.drift_steps, captured)
    kept = Int8Activations(explicit=True, folder=workdir / "unused")
    for feeds in captured:
        kept.keep(feeds, guided=True)  # denoise() runs CFG's [unconditional, conditional] batch
    calibration, held = split_captured(kept.captured)
    calibration, held_out = [unet_inputs(c)[0] for c in calibration], unet_inputs(held[0])[0]
    del bf16_call
    gc.collect()

    log("int8 weights (nncf.compress_weights, the engine's code)")
    folder = workdir / "unet-int8"
    started = time.perf_counter()
    compress_ir(ir, folder, "nncf_int8")
    times_s["compress_weights"] = time.perf_counter() - started
    sizes = {"bf16_ir_bytes": (ir / "model.bin").stat().st_size, "int8_ir_bytes": (folder / "model.bin").stat().st_size}
    irs = {bf16_name: ir, "openvino int8 weights (nncf_int8)": folder}
    if args.full:
        # In a child process: nncf's statistics collection holds activations of every layer (17+ GB at 512² batch 2
        # measured in-process), and the memory goes back to the system when the child exits.
        log(f"int8 weights and activations (nncf.quantize on the fp32 IR, {len(calibration)} calibration inputs, child process)")
        np.savez(workdir / "calibration.npz", **{f"{i}/{k}": v for i, feeds in enumerate(calibration) for k, v in feeds.items()})
        started = time.perf_counter()
        child = subprocess.run([sys.executable, __file__, "--quantize-child", str(workdir)], capture_output=True, text=True)
        times_s["quantize_full"] = time.perf_counter() - started
        if child.returncode == 0:
            sizes["int8_full_ir_bytes"] = (workdir / "unet-a8" / "model.bin").stat().st_size
            irs["openvino int8 weights+activations (nncf_w8a8)"] = workdir / "unet-a8"
        else:
            report["full_int8_error"] = f"exit {child.returncode}: {child.stderr.strip().splitlines()[-1:] or ''}"
            log(f"full int8 failed: {report['full_int8_error']}")
        shutil.rmtree(ir32, ignore_errors=True)
    compiled = {name: compile_static(core.read_model(str(path / "model.xml"))) for name, path in irs.items()}
    report["seconds"] = times_s
    report["ir_bytes"] = sizes
    unet32 = build_unet32() if not args.skip_plain else None

    log("UNet steps, interleaved")
    inputs = {"sample": torch.from_numpy(calibration[0]["sample"]), "timestep": torch.tensor([500.0]),
              "encoder_hidden_states": torch.from_numpy(context)}  # fmt: skip
    feeds = {k: v.numpy() for k, v in inputs.items()}
    variants: dict[str, Callable[[], object]] = {}
    if not args.skip_plain:
        variants["plain diffusers: torch fp32"] = torch_unet_call(unet32, inputs)
    for name, model in compiled.items():
        variants[name] = openvino_call(model, feeds)
    results = {f"unet/{k}": summary(v) for k, v in interleaved(variants, args.rounds).items()}
    del variants, unet32
    gc.collect()

    log("drift: the same seed through each int8 variant")
    drift: dict[str, dict] = {}
    finals = {}
    bf16_step = np.array(compiled[bf16_name](held_out)[0])
    for name, model in compiled.items():
        if name == bf16_name:
            continue
        finals[name] = denoise(lambda f, m=model: m(f)[0], start_latents, context, args.drift_steps)
        # One step's noise prediction on the held-out input (a poor proxy for the drift; the engine keeps it in meta only).
        drift[name] = {"latent_psnr_db": psnr_db(finals[name], reference),
                       "step_psnr_db": psnr_db(np.array(model(held_out)[0]), bf16_step)}  # fmt: skip
    report["load_average_after_unet"] = os.getloadavg()

    log("VAE decoder (torch fp32 = plain; OpenVINO bf16 = the engine) and text encoder")
    torch.manual_seed(0)
    vae = AutoencoderKL.from_config(TINY_VAE if args.tiny else SD_VAE).eval()
    vae_ir = workdir / "vae"
    convert_to_ir(*traceable_decoder(copy.deepcopy(vae).to(engine_dtype)), vae_ir)
    ov_vae = core.compile_model(str(vae_ir / "model.xml"), "CPU", compile_options(precision))

    def pixels(z: np.ndarray) -> np.ndarray:
        image = ov_vae({"latents": (z / 0.18215).astype(np.float32)})[0]
        return np.clip(image / 2 + 0.5, 0, 1)

    reference_pixels = pixels(reference)
    for name, final in finals.items():
        drift[name]["pixel_psnr_db"] = psnr_db(pixels(final), reference_pixels)
        drift[name]["pixel_max_abs"] = float(np.abs(pixels(final) - reference_pixels).max())
    report["drift"] = drift
    z = torch.from_numpy(reference / 0.18215)

    def torch_decode() -> None:
        with torch.inference_mode():
            vae.decoder(z)

    vae_variants = {"plain diffusers: torch fp32": torch_decode, "openvino bf16": openvino_call(ov_vae, {"latents": z.numpy()})}
    results.update({f"vae_decode/{k}": summary(v) for k, v in interleaved(vae_variants, args.vae_rounds).items()})
    clip32 = build_text_encoder(TINY_CLIP if args.tiny else CLIP_L)
    clip_engine = copy.deepcopy(clip32).to(engine_dtype)
    ids = torch.randint(0, 49000, (1, TOKENS), generator=torch.Generator().manual_seed(2))

    def encode(encoder: torch.nn.Module) -> Callable[[], None]:
        def call() -> None:
            with torch.inference_mode():
                encoder(ids, output_hidden_states=True)

        return call

    text_variants = {"plain diffusers: torch fp32": encode(clip32), f"torch {precision}": encode(clip_engine)}
    results.update({f"text_encode/{k}": summary(v) for k, v in interleaved(text_variants, args.rounds + 2).items()})
    report["results"] = results
    report["load_average_end"] = os.getloadavg()
    return report


def quantize_child(workdir: Path) -> None:
    """int8 weights and activations for workdir/unet-fp32, calibrated on workdir/calibration.npz -> workdir/unet-a8."""
    import openvino as ov

    from imgtools_mcp.engine.backends.openvino_int8 import quantize

    stored = np.load(workdir / "calibration.npz")
    count = 1 + max(int(key.split("/")[0]) for key in stored.files)
    calibration = [{key.split("/")[1]: stored[key] for key in stored.files if key.startswith(f"{i}/")} for i in range(count)]
    model = ov.Core().read_model(str(workdir / "unet-fp32" / "model.xml"))
    full = quantize(model, calibration)  # what the engine's calibration child runs
    ov.save_model(full, str(workdir / "unet-a8" / "model.xml"), compress_to_fp16=False)


def table(report: dict) -> str:
    results = report["results"]
    steps = report["steps"]
    unet = {k.split("/", 1)[1]: v for k, v in results.items() if k.startswith("unet/")}
    bf16 = next(v["median_s"] for k, v in unet.items() if k.endswith("(quantize none)"))
    plain = unet.get("plain diffusers: torch fp32", {}).get("median_s")
    m = report["machine"]
    load = report["load_average_start"], report["load_average_after_unet"], report["load_average_end"]
    lines = [
        f"# OpenVINO int8 on the CPU: SD 1.5 UNet{' (tiny config)' if report['tiny'] else ''} at {report['size']}², "
        f"UNet batch {report['unet_batch']} (CFG), random weights",
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores, native bf16 {'yes' if m['bf16_native'] else 'no'}; torch {m['torch']}, "
        f"openvino {m['openvino']}, nncf {m['nncf']}. Medians of {report['rounds']} interleaved rounds after one warm-up each. "
        "Load average (1/5/15 min) at start " + ", after the UNet rounds ".join(
            "/".join(f"{x:.1f}" for x in la) for la in load[:2]) + f", at end {'/'.join(f'{x:.1f}' for x in load[2])} "
        f"on {m['cores']} cores (shared with other work).",
        "",
        "| UNet step | median s | min s | × OpenVINO bf16 | × plain diffusers |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, row in unet.items():
        vs_plain = f"{plain / row['median_s']:.2f}×" if plain else "n/a"
        lines.append(f"| {name} | {row['median_s']:.3f} | {row['min_s']:.3f} | {bf16 / row['median_s']:.2f}× | {vs_plain} |")
    sizes = report["ir_bytes"]
    lines += ["", "The bf16 row here is compiled first. On the AMX machine of int8_cpu.md that order mattered: in a separate "
              "check the engine's bf16 IR ran 3.42 s per step when compiled before its int8 one and 2.27 s when compiled "
              "after it (int8 1.88 s compiled second, 1.99 s first); benchmarks/results/whole_generate*.md compare them "
              "end to end, turn by turn through the engine."]
    lines += ["", "IR weights on disk: " + ", ".join(f"{k.removesuffix('_ir_bytes')} {v / 2**20:.0f} MiB" for k, v in sizes.items())
              + "; preparation: " + ", ".join(f"{k} {v:.1f} s" for k, v in report["seconds"].items()) + ".", ""]
    lines += [f"Drift after {report['drift_steps']} DDIM steps (CFG 7.5) from the same seed, against the OpenVINO bf16 run "
              "(random weights: a bound on the arithmetic, not a trained model's image quality):", "",
              "| variant | one step PSNR dB | latent PSNR dB (the kind of check the engine makes, over its 8 steps) | pixel PSNR dB | pixel max abs diff (0-1) |",
              "|---|---:|---:|---:|---:|"]
    for name, row in report["drift"].items():
        lines.append(f"| {name} | {row['step_psnr_db']:.1f} | {row['latent_psnr_db']:.1f} | {row['pixel_psnr_db']:.1f} | "
                     f"{row['pixel_max_abs']:.3f} |")

    def part(prefix: str, name: str) -> float:
        return results[f"{prefix}/{name}"]["median_s"]

    if plain:
        text_plain = part("text_encode", "plain diffusers: torch fp32")
        text_engine = next(v["median_s"] for k, v in results.items() if k.startswith("text_encode/torch "))
        vae_plain, vae_engine = part("vae_decode", "plain diffusers: torch fp32"), part("vae_decode", "openvino bf16")
        total_plain = 2 * text_plain + steps * plain + vae_plain
        lines += ["", f"Whole generate, composed from the parts measured once ({steps} steps = 2 text encodes + {steps} UNet "
                  "steps + 1 VAE decode; the scheduler's arithmetic is negligible):", "",
                  "| | text | UNet | VAE | total s | × plain diffusers |", "|---|---:|---:|---:|---:|---:|",
                  f"| plain diffusers (torch fp32) | {2 * text_plain:.2f} | {steps * plain:.1f} | {vae_plain:.2f} | "
                  f"{total_plain:.1f} | 1.00× |"]
        for name, row in unet.items():
            if name.startswith("plain"):
                continue
            total = 2 * text_engine + steps * row["median_s"] + vae_engine
            lines.append(f"| {name} | {2 * text_engine:.2f} | {steps * row['median_s']:.1f} | {vae_engine:.2f} | "
                         f"{total:.1f} | {total_plain / total:.2f}× |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="a tiny UNet at 64²: checks the code in seconds")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--rounds", type=int, default=3, help="timed UNet rounds per variant (after one warm-up)")
    parser.add_argument("--vae-rounds", type=int, default=2)
    parser.add_argument("--steps", type=int, default=25, help="denoising steps of the composed whole generate")
    parser.add_argument("--drift-steps", type=int, default=10, help="DDIM steps of the drift runs (same seed, each variant)")
    parser.add_argument("--quantize-child", help=argparse.SUPPRESS)  # internal: the full int8 quantization, in a child
    parser.add_argument("--full", action=argparse.BooleanOptionalAction, default=True,
                        help="also int8 activations (nncf.quantize)")
    parser.add_argument("--skip-plain", action="store_true", help="skip the torch fp32 UNet rows")
    parser.add_argument("--cache-dir", help="working folder for the IRs (default: a temporary one, removed)")
    args = parser.parse_args()
    if args.quantize_child:
        quantize_child(Path(args.quantize_child))
        return
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    made = args.cache_dir is None
    if made:
        args.cache_dir = tempfile.mkdtemp(prefix="imgtools-int8-")
    try:
        report = run(args)
    finally:
        if made:
            shutil.rmtree(args.cache_dir, ignore_errors=True)
    from imgtools_mcp.engine.device import probe

    stem = "int8_cpu" + ("-tiny" if args.tiny else "") + no_amx_suffix(probe("cpu").cpu_features)
    print(save_results(stem, report, table(report)))


if __name__ == "__main__":
    main()
