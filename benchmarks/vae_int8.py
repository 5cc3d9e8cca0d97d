"""Does int8 hold up on the VAE decoder? SD 1.5's decoder (random weights) at 512² on OpenVINO: bf16 against int8
weights and activations, seconds per decode and drift.

The VAE decode is the largest part of a CPU generate after the UNet steps: 7.9 s of an 85.9 s SD 1.5 generate
with int8 activations on the UNet (results/int8_cpu-no-amx.json, whole_generate-no-amx.md), more of it with a
step cache. This measures what the engine's int8 activations (`nncf_w8a8`, openvino_int8.quantize's nncf call on
an fp32 IR, compiled with the engine's options) would give the decoder, before any of it is wired in:

- openvino bf16: the engine's decoder today (its IR in the engine's dtype, bf16 inference precision);
- openvino int8 (w8a8, CNN preset): `nncf.quantize` on the fp32 decoder IR, int8 convolutions, the rest in bf16;
- openvino int8 (w8a8, transformer preset): the same with nncf's transformer settings (the attention's score
  path and the norms stay in float, SmoothQuant) as the engine uses on the UNet.

Calibration: `--calibration` decoder inputs at 256² (decoder latents are post_quant_conv(z / 0.18215) of
Gaussian z, the scale a trained VAE's latents have); drift on `--held-out` other latents at 512², pixel PSNR of
the decoded images in [0, 1] against bf16's. Random weights only bound the drift of a trained decoder: they show
what the arithmetic loses, not how a trained model's images change.

    flock /tmp/bench.lock timeout 1800 .venv/bin/python benchmarks/vae_int8.py     # ~10-15 min on 2 cores
    .venv/bin/python benchmarks/vae_int8.py --tiny                                # a tiny VAE, seconds: checks the code

Writes benchmarks/results/vae_int8.json and .md (vae_int8-tiny.* with --tiny; a -no-amx suffix on a CPU without AMX).
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch
from common import SD_VAE, log, no_amx_suffix, save_results, scratch
from unet_step import interleaved, openvino_call, summary

TINY_VAE = {**SD_VAE, "block_out_channels": [32, 32, 32, 32], "norm_num_groups": 8}
SCALE = 0.18215


def decoder_inputs(vae: torch.nn.Module, count: int, latent: int, seed: int) -> list[np.ndarray]:
    """What the engine's decoder part is given: post_quant_conv of latents at a trained VAE's scale."""
    gen = torch.Generator().manual_seed(seed)
    with torch.inference_mode():
        return [vae.post_quant_conv(torch.randn(1, 4, latent, latent, generator=gen) / SCALE).numpy() for _ in range(count)]


def run(args: argparse.Namespace) -> dict:
    import diffusers
    import nncf
    import openvino as ov
    from diffusers import AutoencoderKL

    from imgtools_mcp.engine.backends.openvino_backend import compile_options, convert_to_ir, traceable_decoder
    from imgtools_mcp.engine.backends.openvino_int8 import decoded_pixels as pixels, psnr_db
    from imgtools_mcp.engine.device import probe

    facts = probe("cpu")
    precision = "bf16" if facts.supports_bf16 else "f32"
    engine_dtype = torch.bfloat16 if facts.supports_bf16 else torch.float32
    size = 64 if args.tiny else args.size
    latent = size // 8
    report: dict = {
        "size": size, "rounds": args.rounds, "calibration": args.calibration, "held_out": args.held_out,
        "calibration_size": min(size, args.calibration_size), "tiny": args.tiny,
        "machine": {"cpu": facts.name, "cores": facts.cpu_cores, "bf16_native": facts.supports_bf16,
                    "cpu_flags": sorted(facts.cpu_features), "python": platform.python_version(),
                    "torch": torch.__version__, "diffusers": diffusers.__version__, "openvino": ov.__version__,
                    "nncf": nncf.__version__},
        "load_average_start": os.getloadavg(),
    }  # fmt: skip
    with scratch("vae-int8-") as work:
        core = ov.Core()
        core.set_property({"CACHE_DIR": str(work / "compiled")})
        torch.manual_seed(0)
        vae = AutoencoderKL.from_config(TINY_VAE if args.tiny else SD_VAE).eval()
        seconds: dict[str, float] = {}
        log("converting the decoder: the engine's dtype, and fp32 for nncf")
        seconds["convert_engine_dtype"] = convert_to_ir(*traceable_decoder(copy.deepcopy(vae).to(engine_dtype)), work / "bf16")
        seconds["convert_fp32"] = convert_to_ir(*traceable_decoder(vae), work / "fp32")
        calibration = decoder_inputs(vae, args.calibration, min(size, args.calibration_size) // 8, seed=1)
        held_out = decoder_inputs(vae, args.held_out, latent, seed=2)
        compiled = {"openvino bf16": core.compile_model(str(work / "bf16" / "model.xml"), "CPU", compile_options(precision))}
        for name, model_type in (("openvino int8 (w8a8, CNN preset)", None),
                                 ("openvino int8 (w8a8, transformer preset)", nncf.ModelType.TRANSFORMER)):  # fmt: skip
            log(f"quantizing: {name} on {len(calibration)} inputs")
            started = time.perf_counter()
            fp32 = core.read_model(str(work / "fp32" / "model.xml"))
            options = {"model_type": model_type} if model_type is not None else {}
            quantized = nncf.quantize(fp32, nncf.Dataset([{"latents": x} for x in calibration]),
                                      subset_size=len(calibration), **options)  # fmt: skip
            seconds[f"quantize/{name}"] = time.perf_counter() - started
            compiled[name] = core.compile_model(quantized, "CPU", compile_options(precision))
        log("drift on held-out latents")
        reference = [pixels(compiled["openvino bf16"]({"latents": x})[0]) for x in held_out]
        drift: dict[str, dict[str, float]] = {}
        for name, model in compiled.items():
            if name == "openvino bf16":
                continue
            decoded = [pixels(model({"latents": x})[0]) for x in held_out]
            drift[name] = {
                "pixel_psnr_db": min(psnr_db(d, r) for d, r in zip(decoded, reference, strict=True)),
                "pixel_max_abs": max(float(np.abs(d - r).max()) for d, r in zip(decoded, reference, strict=True)),
            }
        log("timing, turn by turn")
        calls = {name: openvino_call(model, {"latents": held_out[0]}) for name, model in compiled.items()}
        results = {name: summary(times) for name, times in interleaved(calls, args.rounds).items()}
    report.update(seconds=seconds, drift=drift, results=results, load_average_end=os.getloadavg())
    return report


def markdown(report: dict) -> str:
    machine = report["machine"]
    bf16 = report["results"]["openvino bf16"]["median_s"]
    lines = [
        f"# int8 on the VAE decoder: SD 1.5's at {report['size']}², random weights, OpenVINO", "",
        f"Machine: {machine['cpu']}, {machine['cores']} cores, native bf16 {'yes' if machine['bf16_native'] else 'no'}"
        f" ({', '.join(f for f in machine['cpu_flags'] if f.startswith(('amx', 'avx512_vnni', 'avx512_bf16')))});"
        f" openvino {machine['openvino']}, nncf {machine['nncf']}. Medians of {report['rounds']} interleaved rounds "
        f"after one warm-up each. Load average at start {'/'.join(f'{x:.1f}' for x in report['load_average_start'])}, "
        f"at end {'/'.join(f'{x:.1f}' for x in report['load_average_end'])}.", "",
        "| decoder | median s | min s | × bf16 | pixel PSNR dB vs bf16 (worst of held-out) | max abs diff (0-1) |",
        "|---|---:|---:|---:|---:|---:|",
    ]  # fmt: skip
    for name, row in report["results"].items():
        drift = report["drift"].get(name)
        psnr = f"{drift['pixel_psnr_db']:.1f}" if drift else "reference"
        peak = f"{drift['pixel_max_abs']:.3f}" if drift else ""
        lines.append(f"| {name} | {row['median_s']:.2f} | {row['min_s']:.2f} | {bf16 / row['median_s']:.2f}× | {psnr} | {peak} |")
    seconds = ", ".join(f"{k} {v:.1f} s" for k, v in report["seconds"].items())
    lines += [
        "",
        f"Calibration: {report['calibration']} decoder inputs at {report['calibration_size']}²; drift on "
        f"{report['held_out']} other inputs at {report['size']}². Preparation: {seconds}.",
        "Random weights bound the arithmetic's drift only; a trained decoder's images may change more or less.",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--calibration", type=int, default=8)
    parser.add_argument("--calibration-size", type=int, default=256)
    parser.add_argument("--held-out", type=int, default=2)
    parser.add_argument("--tiny", action="store_true")
    args = parser.parse_args()
    report = run(args)
    stem = "vae_int8" + ("-tiny" if args.tiny else "") + no_amx_suffix(report["machine"]["cpu_flags"])
    print(save_results(stem, report, markdown(report)))


if __name__ == "__main__":
    main()
