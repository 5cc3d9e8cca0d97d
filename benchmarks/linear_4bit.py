"""Weight-only quantized Linear layers through the engine's own quantize_module: seconds per call and output error.

FLUX.1's MLP Linear (3072 -> 12288) on 1536 tokens (512² image tokens plus 512 text tokens), random weights, in
the engine's dtype (bf16), as weights as loaded, SDNQ int8, SDNQ uint4 and bitsandbytes nf4 where installed; each
timed turn by turn over the same rounds, medians reported. The relative error is ||y_q - y|| / ||y|| against the
unquantized layer on the same input. This decides the order of each ladder rung's methods (fastest first).

    .venv/bin/python benchmarks/linear_4bit.py              # CPU
    .venv/bin/python benchmarks/linear_4bit.py --device cuda --rounds 20

Writes benchmarks/results/linear_4bit-<device>.json and .md.
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
from common import log, save_results

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

IN_FEATURES, OUT_FEATURES, TOKENS = 3072, 12288, 1536
METHODS = {"sdnq_int8": "sdnq", "sdnq_int4": "sdnq", "bnb_nf4": "bitsandbytes"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    from imgtools_mcp.engine.quantize import module_bytes, quantize_module

    device = torch.device(args.device)
    torch.manual_seed(0)
    plain = torch.nn.Sequential(torch.nn.Linear(IN_FEATURES, OUT_FEATURES)).to(device, torch.bfloat16).eval()
    x = torch.randn(1, TOKENS, IN_FEATURES, device=device, dtype=torch.bfloat16)
    layers: dict[str, torch.nn.Module] = {"bf16 (as loaded)": plain}
    skipped: dict[str, str] = {}
    for method, package in METHODS.items():
        if importlib.util.find_spec(package) is None:
            skipped[method] = f"{package} not installed"
            continue
        log(f"quantizing with {method}")
        layers[method] = quantize_module(copy.deepcopy(plain), method)
    with torch.inference_mode():
        reference = plain(x).float()
        rows = {}
        times: dict[str, list[float]] = {name: [] for name in layers}
        for name, layer in layers.items():  # the first call compiles SDNQ's kernels
            out = layer(x).float()
            rows[name] = {"relative_error": float((out - reference).norm() / reference.norm()), "bytes": module_bytes(layer)}
        for r in range(args.rounds):
            for name, layer in layers.items():
                if device.type == "cuda":
                    torch.cuda.synchronize()
                started = time.perf_counter()
                layer(x)
                if device.type == "cuda":
                    torch.cuda.synchronize()
                times[name].append(time.perf_counter() - started)
            log(f"round {r + 1}/{args.rounds}: " + ", ".join(f"{n} {t[-1] * 1000:.0f} ms" for n, t in times.items()))
    base = statistics.median(times["bf16 (as loaded)"])
    for name, row in rows.items():
        row["median_ms"] = round(statistics.median(times[name]) * 1000, 1)
        row["min_ms"] = round(min(times[name]) * 1000, 1)
        row["x_bf16"] = round(base / statistics.median(times[name]), 2)
    versions = {"torch": torch.__version__}
    for package in sorted(set(METHODS.values())):
        if importlib.util.find_spec(package) is not None:
            from importlib.metadata import version

            versions[package] = version(package)
    report = {
        "device": args.device,
        "machine": platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
        "shape": {"in": IN_FEATURES, "out": OUT_FEATURES, "tokens": TOKENS},
        "rounds": args.rounds,
        "versions": versions,
        "layers": rows,
        "skipped": skipped,
    }
    lines = [
        f"# Weight-only quantized Linear, {IN_FEATURES} -> {OUT_FEATURES} on {TOKENS} tokens, {args.device}",
        "",
        f"bf16 compute, random weights, medians of {args.rounds} turn-by-turn rounds; "
        + ", ".join(f"{k} {v}" for k, v in versions.items()) + f"; {torch.get_num_threads()} threads.",
        "",
        "| weights | ms per call | x bf16 | relative error | weight bytes |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for name, row in rows.items():
        lines.append(f"| {name} | {row['median_ms']} | {row['x_bf16']:.2f}x | {row['relative_error'] * 100:.2f}% | "
                     f"{row['bytes'] / 2**20:.1f} MiB |")
    lines += [f"\n{method}: {why}" for method, why in skipped.items()]
    log(save_results(f"linear_4bit-{args.device}", report, "\n".join(lines) + "\n"))


if __name__ == "__main__":
    main()
