"""Seconds per UNet step of a real-size SD 1.5 or SDXL UNet (random weights) for plain diffusers, the engine's automatic choice and each backend.

Also the VAE decoder and the text encoder(s), so a whole generate (text encoders + N UNet steps + VAE
decode) can be estimated for plain diffusers and for the engine; FLOPs per call counted with
torch.utils.flop_counter.FlopCounterMode; the machine's bf16/fp32 matmul peaks give a roofline
(floor seconds = FLOPs / peak). The OpenVINO rows use the engine's own conversion code
(imgtools_mcp.engine.backends.openvino_backend) and its cache layout, and the last part times a warm
cached load of the converted IR in a fresh process.

Architectures are built from the real configs (written below) with random weights: speed does not depend on
weight values, and nothing is downloaded.

Measurement: every variant gets one warm-up call (excluded), then the variants run turn by turn
(A, B, C, A, B, C, ...) so a noisy neighbour slows them alike; medians are reported.

    .venv/bin/python benchmarks/unet_step.py                      # SD 1.5 at 512², batch 2 (CFG), ~6-10 min
    .venv/bin/python benchmarks/unet_step.py --family sdxl --rounds 1   # SDXL at 1024², reduced (see --help)

Writes benchmarks/results/unet_step-<family>.json and .md (unet_step-<family>-no-bf16.* on a CPU without native
bf16, where the engine runs fp32 and the roofline is the fp32 matmul peak).
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
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
from common import CLIP_L, FAMILIES, OPENCLIP_BIGG, SD15_UNET, SDXL_UNET, SD_VAE, log, save_results

TOKENS = 77
BATCH = 2  # one image with classifier-free guidance: the UNet sees the prompt and the negative prompt together


# ----- machine -----


def matmul_peak(dtype: torch.dtype, n: int = 4096, repeats: int = 5) -> float:
    """Median FLOP/s of an n×n×n matmul: the roofline for the convolutions and matmuls a UNet is made of."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    torch.mm(a, b)
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        torch.mm(a, b)
        times.append(time.perf_counter() - started)
    return 2 * n**3 / statistics.median(times)


def count_flops(build: Callable[[], torch.nn.Module], inputs: Callable[[], dict]) -> int:
    """FLOPs of one call, counted on the meta device (shapes only: nothing is computed or allocated)."""
    from torch.utils.flop_counter import FlopCounterMode

    with torch.device("meta"):
        module = build()
        kwargs = inputs()
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            module(**kwargs)
    return counter.get_total_flops()


# ----- timing -----


def interleaved(
    variants: dict[str, Callable[[], object]],
    rounds: int,
    peaks: dict[str, list[float]] | None = None,
    peak_dtype: torch.dtype = torch.bfloat16,
) -> dict[str, list[float]]:
    """Warm every variant once, then time them turn by turn for `rounds` rounds.

    With `peaks`, the matmul peak of `peak_dtype` (the engine's) is sampled in every round too: on a shared machine
    the roofline moves with the neighbours' load, so it is measured beside the variants rather than once.
    """
    for name, call in variants.items():
        log(f"warm-up {name}")
        call()
    times: dict[str, list[float]] = {name: [] for name in variants}
    for r in range(rounds):
        for name, call in variants.items():
            started = time.perf_counter()
            call()
            times[name].append(time.perf_counter() - started)
            log(f"round {r + 1}/{rounds} {name}: {times[name][-1]:.3f} s")
        if peaks is not None:
            peaks["roofline"].append(matmul_peak(peak_dtype, repeats=2))
    return times


def summary(times: list[float]) -> dict[str, float]:
    return {"median_s": statistics.median(times), "min_s": min(times), "max_s": max(times), "n": len(times)}


# ----- the parts -----


def build_unet(config: dict, dtype: torch.dtype) -> torch.nn.Module:
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    return UNet2DConditionModel.from_config(config).to(dtype).eval()


def unet_inputs(config: dict, size: int, sdxl: bool) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    latent = size // 8
    inputs = {
        "sample": torch.randn(BATCH, 4, latent, latent, generator=generator),
        "timestep": torch.tensor([500.0]),
        "encoder_hidden_states": torch.randn(BATCH, TOKENS, config["cross_attention_dim"], generator=generator),
    }
    if sdxl:
        inputs["added_cond_kwargs"] = {
            "text_embeds": torch.randn(BATCH, 1280, generator=generator),
            "time_ids": torch.tensor([[size, size, 0, 0, size, size]] * BATCH, dtype=torch.float32),
        }
    return inputs


def torch_unet_call(unet: torch.nn.Module, inputs: dict) -> Callable[[], torch.Tensor]:
    dtype = unet.dtype
    cast = {
        k: (v.to(dtype) if k != "timestep" and isinstance(v, torch.Tensor) else v) for k, v in inputs.items() if k != "added_cond_kwargs"
    }
    if "added_cond_kwargs" in inputs:
        cast["added_cond_kwargs"] = {k: v.to(dtype) for k, v in inputs["added_cond_kwargs"].items()}

    def call() -> torch.Tensor:
        with torch.inference_mode():
            return unet(**cast, return_dict=False)[0]

    return call


def unet_feeds(inputs: dict) -> dict[str, np.ndarray]:
    feeds = {k: v.numpy() for k, v in inputs.items() if isinstance(v, torch.Tensor)}
    for k, v in inputs.get("added_cond_kwargs", {}).items():
        feeds[k] = v.numpy()
    return feeds


def openvino_call(compiled, feeds: dict[str, np.ndarray]) -> Callable[[], np.ndarray]:
    request = compiled.create_infer_request()

    def call() -> np.ndarray:
        request.infer(feeds, share_inputs=True)
        return request.get_output_tensor(0).data

    return call


def relative_error(a: np.ndarray, reference: np.ndarray) -> float:
    return float(np.abs(a.astype(np.float32) - reference.astype(np.float32)).mean() / (np.abs(reference).mean() + 1e-12))


def build_vae(sdxl: bool) -> torch.nn.Module:
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    config = {**SD_VAE, **({"sample_size": 1024, "scaling_factor": 0.13025, "force_upcast": True} if sdxl else {})}
    return AutoencoderKL.from_config(config).eval()


def build_text_encoder(config: dict) -> torch.nn.Module:
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(0)
    return CLIPTextModel(CLIPTextConfig(**config)).eval()


# ----- the benchmark -----


def run(args: argparse.Namespace) -> dict:
    from imgtools_mcp.engine.backends.openvino_backend import compile_options, convert_to_ir, traceable_decoder, traceable_unet
    from imgtools_mcp.engine.choice import choose_backend, choose_dtype
    from imgtools_mcp.engine.device import installed_backends, probe

    family = FAMILIES[args.family]
    sdxl = args.family == "sdxl"
    size = args.size or family["size"]
    config = family["unet"]
    facts = probe("cpu")
    dtype_choice = choose_dtype(facts, "auto")
    backend_choice = choose_backend(facts, "auto", available=installed_backends(), family="sdxl" if sdxl else "sd1")
    # The engine runs torch (and converts for OpenVINO) in the dtype it chose: bf16 where native, else fp32.
    dname = dtype_choice.value
    engine_dtype = {"bf16": torch.bfloat16, "fp32": torch.float32}[dname]
    precision = "bf16" if dname == "bf16" else "f32"  # OpenVINO's name for the inference precision

    def label(name: str, backend: str) -> str:
        return name + (" (engine auto)" if backend == backend_choice.value else "")

    # In fp32 on torch the engine's call is plain diffusers' call: one row, marked as both.
    plain = label("diffusers default: torch fp32", "torch" if dname == "fp32" else "")
    workdir = Path(args.cache_dir or tempfile.mkdtemp(prefix="imgtools-bench-"))
    report: dict = {
        "family": args.family, "size": size, "unet_batch": BATCH, "rounds": args.rounds,
        "machine": {"cpu": facts.name, "cores": facts.cpu_cores, "torch_threads": torch.get_num_threads(),
                    "bf16_native": facts.supports_bf16, "ram_gib": round(facts.total_memory_bytes / 2**30, 1),
                    "python": platform.python_version(), "torch": torch.__version__},
        "automatic_choice": {"dtype": dtype_choice.value, "backend": backend_choice.value, "reason": backend_choice.reason},
    }  # fmt: skip
    import diffusers
    import openvino

    report["machine"].update(diffusers=diffusers.__version__, openvino=openvino.__version__)

    log("measuring matmul peaks")
    peaks = {"roofline": [matmul_peak(engine_dtype)], "fp32": [matmul_peak(torch.float32)]}

    log("counting FLOPs")
    from diffusers import UNet2DConditionModel

    meta_inputs = lambda: unet_inputs(config, size, sdxl)  # noqa: E731
    flops = {"unet_step": count_flops(lambda: UNet2DConditionModel.from_config(config), meta_inputs)}
    latent = size // 8
    flops["vae_decode"] = count_flops(
        lambda: build_vae(sdxl).decoder, lambda: {"sample": torch.randn(1, 4, latent, latent)}
    )
    flops["text_encode"] = sum(
        count_flops(lambda c=c: build_text_encoder(c), lambda: {"input_ids": torch.zeros(1, TOKENS, dtype=torch.long)})
        for c in family["text"]
    )
    report["flops"] = flops
    log(f"UNet step {flops['unet_step'] / 1e12:.3f} TFLOP, VAE decode {flops['vae_decode'] / 1e12:.3f}, text {flops['text_encode'] / 1e12:.3f}")

    results: dict[str, dict] = {}
    outputs: dict[str, np.ndarray] = {}
    inputs = unet_inputs(config, size, sdxl)
    feeds = unet_feeds(inputs)
    import openvino as ov

    core = ov.Core()
    core.set_property({"CACHE_DIR": str(workdir / "openvino" / "compiled")})

    # ----- UNet -----
    log(f"building the UNet ({dname}, as the engine loads it, for torch and the OpenVINO conversion)")
    unet_engine = build_unet(config, engine_dtype)
    unet_ir = workdir / "openvino" / f"unet-{args.family}-{dname}" / "model.xml"
    if not unet_ir.is_file():
        log(f"converting the UNet to OpenVINO with the engine's converter ({dname} module)")
        convert_seconds = convert_to_ir(*traceable_unet(unet_engine, sdxl=sdxl), unet_ir.parent)
        report["unet_convert_s"] = convert_seconds
        log(f"converted in {convert_seconds:.1f} s")
    started = time.perf_counter()
    ov_unet = core.compile_model(str(unet_ir), "CPU", compile_options(precision))
    report["unet_compile_s"] = time.perf_counter() - started
    variants: dict[str, Callable[[], object]] = {}
    if not args.skip_fp32:
        unet_fp32 = unet_engine if engine_dtype == torch.float32 else build_unet(config, torch.float32)
        variants[plain] = torch_unet_call(unet_fp32, inputs)
    if engine_dtype != torch.float32 or args.skip_fp32:
        variants[label(f"torch {dname}", "torch")] = torch_unet_call(unet_engine, inputs)
    # The engine compiles its UNet for each request's static shape (openvino_backend.CompiledPart).
    static = core.read_model(str(unet_ir))
    static.reshape({name: list(value.shape) for name, value in feeds.items()})
    variants[label(f"openvino {precision} static shape", "openvino")] = openvino_call(
        core.compile_model(static, "CPU", compile_options(precision)), feeds
    )
    if args.dynamic:
        variants[f"openvino {precision} dynamic shape"] = openvino_call(ov_unet, feeds)
    unet_times = interleaved(variants, args.rounds, peaks, engine_dtype)
    for name, call in variants.items():
        result = call()
        outputs[name] = (result.float().numpy() if isinstance(result, torch.Tensor) else np.array(result)).copy()
    reference = next(name for name in outputs if name.startswith(("diffusers default", "torch")))
    for name, times in unet_times.items():
        results[f"unet/{name}"] = {**summary(times), "rel_error_vs_" + reference.split(":")[0].replace(" ", "_"): relative_error(outputs[name], outputs[reference])}
    del variants, ov_unet, outputs
    if not args.skip_fp32:
        del unet_fp32
    del unet_engine
    gc.collect()

    # ----- VAE decoder -----
    log("VAE decoder")
    vae = build_vae(sdxl)
    vae_ir = workdir / "openvino" / f"vae_decoder-{args.family}-{dname}" / "model.xml"
    vae_engine = copy.deepcopy(vae).to(engine_dtype)
    if not vae_ir.is_file():
        report["vae_convert_s"] = convert_to_ir(*traceable_decoder(vae_engine), vae_ir.parent)
    ov_vae = core.compile_model(str(vae_ir), "CPU", compile_options(precision))
    z = torch.randn(1, 4, latent, latent, generator=torch.Generator().manual_seed(1))

    def torch_decode(module: torch.nn.Module) -> Callable[[], torch.Tensor]:
        zz = z.to(next(module.parameters()).dtype)

        def call() -> torch.Tensor:
            with torch.inference_mode():
                return module.decoder(zz)

        return call

    vae_variants: dict[str, Callable[[], object]] = {}
    if not args.skip_fp32:
        vae_variants[plain] = torch_decode(vae)
    if engine_dtype != torch.float32 or args.skip_fp32:
        vae_variants[label(f"torch {dname}", "torch")] = torch_decode(vae_engine)
    vae_variants[label(f"openvino {precision} dynamic shape", "openvino")] = openvino_call(ov_vae, {"latents": z.numpy()})
    for name, times in interleaved(vae_variants, args.vae_rounds, peaks, engine_dtype).items():
        results[f"vae_decode/{name}"] = summary(times)
    del vae_variants, ov_vae, vae, vae_engine
    gc.collect()

    # ----- text encoder(s): torch in the engine's dtype, one call per prompt (prompt and negative prompt) -----
    log("text encoder(s)")
    encoders32 = [build_text_encoder(c) for c in family["text"]]
    encoders_engine = [copy.deepcopy(e).to(engine_dtype) for e in encoders32]
    ids = torch.randint(0, 49000, (1, TOKENS), generator=torch.Generator().manual_seed(2))

    def encode(encoders: list[torch.nn.Module]) -> Callable[[], None]:
        def call() -> None:
            with torch.inference_mode():
                for encoder in encoders:
                    encoder(ids, output_hidden_states=True)

        return call

    # Text encoders stay in torch on every backend; in fp32 the engine's call is plain diffusers' call.
    text_variants = {"diffusers default: torch fp32" + (" (engine auto)" if dname == "fp32" else ""): encode(encoders32)}
    if dname != "fp32":
        text_variants[f"torch {dname} (engine auto)"] = encode(encoders_engine)
    for name, times in interleaved(text_variants, args.rounds + 2).items():
        results[f"text_encode/{name}"] = summary(times)
    del text_variants, encoders32, encoders_engine
    gc.collect()
    report["results"] = results
    peaks["fp32"].append(matmul_peak(torch.float32))
    # The best sample is the machine's capability; the median is what the variants competed with.
    report["peak_flops"] = {"roofline_dtype": dname, "roofline": max(peaks["roofline"]), "fp32": max(peaks["fp32"]),
                            "roofline_median": statistics.median(peaks["roofline"]), "samples": peaks}  # fmt: skip
    log(f"peaks: {dname} {report['peak_flops']['roofline'] / 1e12:.3f} TFLOP/s (median {report['peak_flops']['roofline_median'] / 1e12:.3f}), "
        f"fp32 {report['peak_flops']['fp32'] / 1e12:.3f}")

    # ----- warm cached load: a fresh process compiles the saved IRs with the engine's CACHE_DIR -----
    log("warm cached load in a fresh process")
    report["warm_load"] = warm_load(workdir, [unet_ir, vae_ir], precision)
    return report


WARM_LOAD_CHILD = r"""
import json, sys, time
started = time.perf_counter()
import openvino as ov
from imgtools_mcp.engine.backends.openvino_backend import compile_options
imported = time.perf_counter() - started
core = ov.Core()
core.set_property({"CACHE_DIR": sys.argv[1]})
times = {}
for xml in sys.argv[3:]:
    t = time.perf_counter()
    core.compile_model(xml, "CPU", compile_options(sys.argv[2]))
    times[xml] = time.perf_counter() - t
print(json.dumps({"import_s": imported, "compile_s": times, "total_s": time.perf_counter() - started}))
"""


def warm_load(workdir: Path, irs: list[Path], precision: str) -> dict:
    """Seconds for a new process to get compiled UNet + VAE decoder from the disk cache (IR + OpenVINO's blobs)."""
    out = {}
    for label, cache in (("ir_only", workdir / "openvino" / "compiled-cold"), ("ir_and_blob_cache", workdir / "openvino" / "compiled")):
        command = [sys.executable, "-c", WARM_LOAD_CHILD, str(cache), precision, *map(str, irs)]
        if label == "ir_only":
            cache.mkdir(parents=True, exist_ok=True)
            for blob in cache.glob("*"):
                blob.unlink()
        started = time.perf_counter()
        child = json.loads(subprocess.run(command, check=True, capture_output=True, text=True).stdout)
        child["process_s"] = time.perf_counter() - started
        out[label] = child
        log(f"warm load ({label}): {child['total_s']:.2f} s in the child, {child['process_s']:.2f} s with interpreter start")
    return out


def table(report: dict) -> str:
    """The markdown summary: per-call seconds, speed-ups against plain diffusers, roofline, whole-generate estimate."""
    results = report["results"]
    flops = report["flops"]
    peak = report["peak_flops"]
    steps = FAMILIES[report["family"]]["steps"]
    rdt = peak["roofline_dtype"]

    def plain_row(part: str) -> dict | None:
        return next((v for k, v in results.items() if k.startswith(part + "/diffusers default")), None)

    def auto_row(part: str) -> dict:
        return next(v for k, v in results.items() if k.startswith(part + "/") and "engine auto" in k)
    lines = [
        f"# UNet step benchmark: {report['family']} at {report['size']}², UNet batch {report['unet_batch']} (CFG)",
        "",
        f"Machine: {report['machine']['cpu']}, {report['machine']['cores']} cores, "
        f"native bf16 {'yes' if report['machine']['bf16_native'] else 'no'}, torch {report['machine']['torch']}, "
        f"diffusers {report['machine']['diffusers']}, openvino {report['machine']['openvino']}. "
        f"Medians of {report['rounds']} interleaved rounds after one warm-up each.",
        f"Matmul peak (best of {len(peak['samples']['roofline'])} samples taken between rounds): {rdt} {peak['roofline'] / 1e12:.3f} TFLOP/s "
        f"(median {peak['roofline_median'] / 1e12:.3f})" + (f", fp32 {peak['fp32'] / 1e12:.3f} TFLOP/s. " if rdt != "fp32" else ". ")
        + "The matmul peak is torch's; a backend's own convolutions can run above it, so the roofline is approximate. "
        f"FLOPs (FlopCounterMode): UNet step {flops['unet_step'] / 1e12:.3f} T, VAE decode {flops['vae_decode'] / 1e12:.3f} T, "
        f"text encode {flops['text_encode'] / 1e12:.4f} T per prompt.",
        f"Engine automatic choice here: dtype {report['automatic_choice']['dtype']}, backend "
        f"{report['automatic_choice']['backend']} ({report['automatic_choice']['reason']}).",
        "",
        f"Roofline columns: FLOPs / best {rdt} matmul peak (the engine's dtype here) / the variant's time (median, and best round).",
        "",
        f"| part | variant | median s | min s | × plain diffusers (median / best) | % of {rdt} roofline (median / best) |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for part, flop_key in (("unet", "unet_step"), ("vae_decode", "vae_decode"), ("text_encode", "text_encode")):
        rows = {k.split("/", 1)[1]: v for k, v in results.items() if k.startswith(part + "/")}
        plain = plain_row(part)
        for name, row in rows.items():
            speedup = f"{plain['median_s'] / row['median_s']:.2f}× / {plain['min_s'] / row['min_s']:.2f}×" if plain else "n/a"
            floor = flops[flop_key] / peak["roofline"]
            lines.append(f"| {part} | {name} | {row['median_s']:.3f} | {row['min_s']:.3f} | {speedup} | "
                         f"{floor / row['median_s']:.0%} / {floor / row['min_s']:.0%} |")
    lines.append("")
    auto_unet = auto_row("unet")["median_s"]
    auto_vae = auto_row("vae_decode")["median_s"]
    auto_text = auto_row("text_encode")["median_s"]
    floor = flops["unet_step"] / peak["roofline"]
    best_unet = auto_row("unet")["min_s"]
    lines.append(f"UNet roofline floor (best {rdt} peak): {floor:.3f} s/step; engine auto reaches {floor / auto_unet:.0%} of it "
                 f"(median), {floor / best_unet:.0%} (best round).")
    if plain_row("unet") is not None:
        plain_unet = plain_row("unet")["median_s"]
        plain_vae = plain_row("vae_decode")["median_s"]
        plain_text = plain_row("text_encode")["median_s"]
        # Prompt and negative prompt are encoded in two calls; the scheduler's arithmetic is negligible here.
        plain_total = 2 * plain_text + steps * plain_unet + plain_vae
        auto_total = 2 * auto_text + steps * auto_unet + auto_vae
        lines += [
            "",
            f"Whole generate estimate ({steps} steps = 2 text encodes + {steps} UNet steps + 1 VAE decode):",
            "",
            "| | text | UNet | VAE | total s | × |",
            "|---|---:|---:|---:|---:|---:|",
            f"| plain diffusers (fp32 torch) | {2 * plain_text:.2f} | {steps * plain_unet:.1f} | {plain_vae:.2f} | {plain_total:.1f} | 1.00× |",
            f"| engine auto | {2 * auto_text:.2f} | {steps * auto_unet:.1f} | {auto_vae:.2f} | {auto_total:.1f} | {plain_total / auto_total:.2f}× |",
            "",
            f"Per UNet step: engine auto {plain_unet / auto_unet:.2f}× plain diffusers (target ≥ 5×); whole generate "
            f"{plain_total / auto_total:.2f}× (target ≥ 4×).",
        ]
    else:
        lines += ["", "No plain-diffusers (fp32) UNet/VAE rows in this run (--skip-fp32), so no speed-up or whole-generate figures."]
    warm = report.get("warm_load")
    if warm:
        lines += ["", "OpenVINO part of a warm start: a fresh process compiles the saved IRs (UNet as the dynamic graph, by "
                  "path; the engine's whole warm start, with its static UNet shape, is in warm_load.md):", ""]
        for label, row in warm.items():
            compiles = ", ".join(f"{Path(k).parent.name} {v:.2f} s" for k, v in row["compile_s"].items())
            lines.append(f"- {label}: {row['total_s']:.2f} s in the process ({compiles}; openvino import {row['import_s']:.2f} s), "
                         f"{row['process_s']:.2f} s including interpreter start")
    for key in ("unet_convert_s", "vae_convert_s", "unet_compile_s"):
        if key in report:
            lines.append(f"- {key}: {report[key]:.1f} s")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--family", choices=sorted(FAMILIES), default="sd15")
    parser.add_argument("--size", type=int, help="image size (default: the family's native size)")
    parser.add_argument("--rounds", type=int, default=3, help="timed UNet rounds per variant (after one warm-up)")
    parser.add_argument("--vae-rounds", type=int, default=2, help="timed VAE-decode rounds per variant")
    parser.add_argument("--dynamic", action=argparse.BooleanOptionalAction, default=True,
                        help="also time the dynamic-shape OpenVINO graph (what the static choice is measured against)")
    parser.add_argument("--skip-fp32", action="store_true", help="skip the fp32 (plain diffusers) rows: SDXL fp32 is slow")
    parser.add_argument("--cache-dir", help="where IRs go (reused when present, kept); default: a temporary folder, removed")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's own choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    made_workdir = args.cache_dir is None
    if made_workdir:
        args.cache_dir = tempfile.mkdtemp(prefix="imgtools-bench-")
    try:
        report = run(args)
    finally:
        if made_workdir:
            shutil.rmtree(args.cache_dir, ignore_errors=True)  # IRs and compiled blobs: gigabytes
    stem = f"unet_step-{args.family}" + (f"-{args.size}" if args.size else "")
    if not report["machine"]["bf16_native"]:
        stem += "-no-bf16"  # a CPU without native bf16 does not replace the results of one that has it
    print(save_results(stem, report, table(report)))


if __name__ == "__main__":
    main()
