"""The full FLUX.1 transformer (12B layout, random weights) with int8 weights on a CPU: peak RSS and s/step.

In bf16 the transformer is 23.8 GB and does not fit a 24 GiB machine beside the OS, so it is never held whole
here: it is built on the meta device, then each part (the embedders and output layers, then every block in turn)
gets memory, random bf16 weights, and its int8 weights at once, before the next part gets memory. The int8 method
is the one the engine picks on a CPU (engine/quantize.py: SDNQ int8 where sdnq is installed, else torchao int8
weight-only), with the engine's settings; SDNQ is applied block by block under each block's name in the whole
model, so its FLUX.1 skip list (embedders, norm_out, proj_out stay bf16) picks the same layers as in the engine.
Then one denoising step at 512² and one at 1024² (inputs from family_step.py; a 256² step first compiles
SDNQ's dequantization kernels, one per weight shape). The bf16 row is family_step.py's extrapolation
(results/family_step-flux-cpu.json), which does not fit this machine.

    .venv/bin/python benchmarks/flux_int8.py --check   # the same code on a tiny-width, one-block model
    flock /tmp/bench.lock timeout 1500 .venv/bin/python benchmarks/flux_int8.py

Writes benchmarks/results/flux_int8-cpu.json and .md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import time
from pathlib import Path

import psutil
import torch

sys.path.insert(0, str(Path(__file__).parent))
from family_step import FAMILIES, inputs  # noqa: E402

RESULTS = Path(__file__).parent / "results"
GB = 10**9
GIB = 1024**3


def peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def rss() -> int:
    return psutil.Process().memory_info().rss


def build_int8(config: dict, method_id: str) -> tuple[torch.nn.Module, dict]:
    """The transformer with int8 weights, one part at a time in bf16 (never the whole bf16 model)."""
    import diffusers

    from imgtools_mcp.engine.quantize import module_bytes, quantize_module, sdnq_config

    with torch.device("meta"):
        model = diffusers.FluxTransformer2DModel(**config)
    model = model.to(torch.bfloat16).eval()  # dtype only: still on meta
    bf16_bytes = sum(p.numel() for p in model.parameters()) * 2
    if method_id.startswith("sdnq"):
        from sdnq import apply_sdnq_to_module
        from sdnq.utils import add_module_skip_keys

        sdnq = sdnq_config(method_id)
        add_module_skip_keys(model, sdnq)  # FluxTransformer2DModel's skip list, as sdnq_post_load_quant takes it

    def quantize(part: torch.nn.Module, name: str) -> None:
        if method_id.startswith("sdnq"):
            apply_sdnq_to_module(part, sdnq, full_param_name=name)
        else:
            quantize_module(part, method_id)

    started = time.perf_counter()
    blocks = {name: getattr(model, name) for name in ("transformer_blocks", "single_transformer_blocks")}
    rest = [name for name, _ in model.named_children() if name not in blocks]
    with torch.no_grad():
        for name in rest:  # embedders, norm_out, proj_out: SDNQ leaves these bf16 (torchao would quantize them)
            part = getattr(model, name).to_empty(device="cpu")
            for p in part.parameters():
                p.normal_(0, 0.02)
            quantize(part, name)
        for kind, blocklist in blocks.items():
            for index in range(len(blocklist)):
                block = blocklist[index].to_empty(device="cpu")
                for p in block.parameters():
                    p.normal_(0, 0.02)
                quantize(block, f"{kind}.{index}")
                blocklist[index] = block
    # Buffers not in any part above (none in this diffusers version) would still be on meta: fail loudly.
    left = [n for n, t in (*model.named_parameters(), *model.named_buffers()) if t.is_meta]
    if left:
        raise SystemExit(f"still on the meta device: {left[:5]}")
    return model, {"bf16_weights_bytes": bf16_bytes, "int8_weights_bytes": module_bytes(model),
                   "build_seconds": time.perf_counter() - started}


def one_step(model, kwargs: dict) -> float:
    with torch.inference_mode():
        started = time.perf_counter()
        model(**kwargs, return_dict=False)
        return time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="tiny width, one block of each kind, 128²; writes nothing")
    parser.add_argument("--method", default=None, help="quantization method (default: the engine's int8 pick on CPU)")
    args = parser.parse_args()
    from imgtools_mcp.engine.device import probe
    from imgtools_mcp.engine.quantize import choose_method, installed_packages

    method_id = args.method or choose_method("int8", probe("cpu"), installed=installed_packages()).value
    if method_id is None:
        raise SystemExit("no int8 method installed (pip install 'imgtools-mcp[quant]')")
    config = dict(FAMILIES["flux"]["config"])
    sizes = (256, 512, 1024)
    if args.check:
        config.update(num_layers=1, num_single_layers=1, num_attention_heads=2)
        sizes = (128, 128, 256)
    load_start = list(os.getloadavg())
    available = psutil.virtual_memory().available
    model, built = build_int8(config, method_id)
    after_build = {"rss_bytes": rss(), "peak_rss_bytes": peak_rss()}
    print(f"{method_id}: built in {built['build_seconds']:.0f} s, weights {built['int8_weights_bytes'] / GB:.2f} GB "
          f"(bf16 {built['bf16_weights_bytes'] / GB:.2f} GB), RSS {after_build['rss_bytes'] / GB:.2f} GB, "
          f"peak {after_build['peak_rss_bytes'] / GB:.2f} GB", flush=True)
    warm = one_step(model, inputs("flux", torch.bfloat16, "cpu", size=sizes[0]))
    steps = {}
    for size in sizes[1:]:
        steps[size] = {"seconds": one_step(model, inputs("flux", torch.bfloat16, "cpu", size=size)),
                       "peak_rss_bytes": peak_rss(), "loadavg": list(os.getloadavg())}
        print(f"{size}²: {steps[size]['seconds']:.1f} s/step, peak RSS {steps[size]['peak_rss_bytes'] / GB:.2f} GB, "
              f"load {steps[size]['loadavg'][0]:.1f}", flush=True)
    if args.check:
        return 0
    bf16 = json.loads((RESULTS / "family_step-flux-cpu.json").read_text())
    result = {
        "method": method_id, "machine": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
        "ram_total_bytes": psutil.virtual_memory().total, "ram_available_at_start_bytes": available,
        "loadavg_start": load_start, "loadavg_end": list(os.getloadavg()), **built, "after_build": after_build,
        "warmup_256_seconds": warm, "steps": {str(k): v for k, v in steps.items()},
        "fits_24_gib": steps[1024]["peak_rss_bytes"] < 24 * GIB,
        "bf16": {"weights_bytes": bf16["full_weights_bytes"], "seconds_per_step_1024": bf16["seconds_per_step"],
                 "how": "extrapolated by family_step.py from reduced depths (" + bf16["how"] + ")",
                 "fits_24_gib": False},
        "note": "CPU shared with other work while measured; random weights",
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "flux_int8-cpu.json").write_text(json.dumps(result, indent=2) + "\n")
    load = ", ".join(f"{x:.1f}" for x in load_start) + f" → {result['loadavg_end'][0]:.1f}"
    lines = [
        f"# FLUX.1 transformer (12B layout, random weights) on CPU: int8 weights ({method_id}) vs bf16", "",
        "| weights | weights GB | peak RSS GB | fits 24 GiB | s/step 512² | s/step 1024² |", "|---|---|---|---|---|---|",
        f"| int8 ({method_id}) | {built['int8_weights_bytes'] / GB:.1f} | {steps[1024]['peak_rss_bytes'] / GB:.1f} | "
        f"{'yes' if result['fits_24_gib'] else 'no'} | {steps[512]['seconds']:.0f} | {steps[1024]['seconds']:.0f} |",
        f"| bf16 | {bf16['full_weights_bytes'] / GB:.1f} | ≥ {bf16['full_weights_bytes'] / GB:.1f} (weights alone) | no | "
        f"— | {bf16['seconds_per_step']:.0f} (extrapolated) |", "",
        f"- int8: built part by part in {built['build_seconds']:.0f} s (random bf16 weights, then int8, one block at a "
        f"time); RSS once built {after_build['rss_bytes'] / GB:.1f} GB; one step each, after a 256² warm-up step "
        f"({warm:.0f} s, compiles the dequantization kernels).",
        "- bf16: family_step.py's row (results/family_step-flux-cpu.md), extrapolated from 1+2 and 2+4 blocks: the "
        "whole model does not fit this machine.",
        f"- Machine: {result['machine']}, {result['cpu_count']} cores, {result['ram_total_bytes'] / GIB:.0f} GiB RAM "
        f"({available / GIB:.1f} GiB available at start), shared with other work (load average 1/5/15 min at start "
        f"→ 1 min at end: {load}).",
    ]
    (RESULTS / "flux_int8-cpu.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
