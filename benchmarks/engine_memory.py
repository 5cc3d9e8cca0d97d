"""Model switching and repeated LoRA requests on the engine itself: device memory, eviction records, seconds.

    python benchmarks/engine_memory.py                          # two tiny models, any device
    python benchmarks/engine_memory.py --unet sd --size 128     # two random SD-1.5-width UNets (~800M params each)

Phase 1 switches between two models under a cache budget that holds only one: after each switch the
device should hold one model's weights, and each eviction record should say `released`. Phase 2
sends N requests with a LoRA, N without, N alternating: seconds per request should stay flat,
device memory and live tensors should not grow, and the adapter is loaded once.
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import tempfile
import time
from pathlib import Path

import anyio
import psutil
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

MIB = 2**20


def make_models(work: Path, unet: str) -> tuple[Path, Path]:
    from diffusers import UNet2DConditionModel

    from imgtools_mcp.testing import make_test_model
    from imgtools_mcp.testing.tiny_sd import TEXT_HIDDEN

    folders = (make_test_model(work / "model-a", "sd15", seed=1), make_test_model(work / "model-b", "sd15", seed=2))
    if unet == "sd":
        # SD 1.5's UNet widths and depths (the text width stays the tiny encoder's).
        for seed, folder in enumerate(folders):
            torch.manual_seed(seed)
            big = UNet2DConditionModel(
                block_out_channels=(320, 640, 1280, 1280), layers_per_block=2, cross_attention_dim=TEXT_HIDDEN,
                attention_head_dim=8, sample_size=64,
            )
            big.save_pretrained(folder / "unet")
    return folders


def live_tensors() -> int:
    gc.collect()
    return sum(1 for obj in gc.get_objects() if isinstance(obj, torch.Tensor))


def device_mib(device: str) -> float:
    if device.startswith("cuda"):
        return torch.cuda.memory_allocated(device) / MIB
    return float("nan")


async def run(args: argparse.Namespace) -> None:
    from imgtools_mcp.config import Settings
    from imgtools_mcp.engine.engine import Engine
    from imgtools_mcp.engine.request import EngineRequest, LoraWeight, ResolvedJob
    from imgtools_mcp.testing.files import make_test_lora

    work = Path(tempfile.mkdtemp(prefix="engine-memory-"))
    started = time.perf_counter()
    model_a, model_b = make_models(work, args.unet)
    lora = make_test_lora(model_a, work / "loras" / "style.safetensors")
    print(f"built two {args.unet} models and a LoRA in {time.perf_counter() - started:.1f} s")
    settings = Settings(
        model=str(model_a), output_dir=work / "out", device=args.device, hf_offline=True,
        lora_dirs=[lora.parent], model_cache_bytes=args.budget,
    )
    engine = Engine(settings)
    process = psutil.Process()
    print(f"device {engine.device} ({engine.facts.name}), dtype {engine.dtype_choice.value}, "
          f"budget {engine.budget.value / MIB:.0f} MiB ({engine.budget.reason})")

    def job(model: Path, loras: list[LoraWeight]) -> ResolvedJob:
        return engine.check(EngineRequest(
            mode="txt2img", model=str(model), prompt="a lighthouse at dusk", negative_prompt="",
            width=args.size, height=args.size, steps=args.steps, guidance_scale=7.0, sampler="default",
            seeds=[7], loras=loras,
        ))

    print("\nphase 1: switching models under a budget that holds one")
    print(f"{'#':>2} {'model':<8} {'load_s':>7} {'gen_s':>7} {'device_MiB':>10} {'rss_MiB':>8} {'tensors':>8}  eviction")
    for index, model in enumerate([model_a, model_b] * (args.switches // 2) + [model_a]):
        evictions_before = len(engine.cache.evictions)
        out = await engine.generate(job(model, []))
        eviction = engine.cache.evictions[-1] if len(engine.cache.evictions) > evictions_before else None
        note = ""
        if eviction is not None:
            freed = eviction.device_bytes_freed
            note = (f"evicted {Path(eviction.model).name}: released={eviction.released}, "
                    f"device freed {freed / MIB:.1f} MiB" if freed is not None else f"evicted {Path(eviction.model).name}: released={eviction.released}")
            note += f", weights {eviction.weights_bytes / MIB:.1f} MiB, rss freed {eviction.rss_bytes_freed / MIB:.1f} MiB"
        print(f"{index:>2} {model.name:<8} {out.timings['load_s']:>7.2f} {out.timings['generate_s']:>7.3f} "
              f"{device_mib(engine.device):>10.1f} {process.memory_info().rss / MIB:>8.0f} {live_tensors():>8}  {note}")

    print(f"\nphase 2: {args.requests} requests each without the LoRA, with it, alternating")
    print(f"{'phase':<10} {'#':>2} {'lora':>4} {'gen_s':>7} {'device_MiB':>10} {'tensors':>8} adapters")
    for phase in ("plain", "lora", "alternate"):
        seconds = []
        for index in range(args.requests):
            use = phase == "lora" or (phase == "alternate" and index % 2 == 0)
            out = await engine.generate(job(model_a, [LoraWeight(lora.stem, 1.0)] if use else []))
            seconds.append(out.timings["generate_s"])
            loaded = engine.cache.get(str(model_a.resolve()))
            adapters = [a.source.name for a in loaded.adapters.loaded] if loaded and loaded.adapters else []
            print(f"{phase:<10} {index:>2} {'on' if use else 'off':>4} {seconds[-1]:>7.3f} {device_mib(engine.device):>10.1f} "
                  f"{live_tensors():>8} {','.join(adapters) or '-'}")
        half = len(seconds) // 2
        print(f"  {phase}: median {statistics.median(seconds):.3f} s; first half {statistics.mean(seconds[:half]):.3f} s, "
              f"second half {statistics.mean(seconds[half:]):.3f} s")
    await engine.aclose()
    print(f"\nafter closing the engine: device {device_mib(engine.device):.1f} MiB, "
          f"evictions released: {all(e.released for e in engine.cache.evictions)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--unet", choices=["tiny", "sd"], default="tiny")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--switches", type=int, default=4)
    parser.add_argument("--requests", type=int, default=10)
    parser.add_argument("--budget", default=None, help="cache budget (default: room for one model of the chosen kind)")
    args = parser.parse_args()
    if args.budget is None:
        args.budget = "2500MiB" if args.unet == "sd" else "3MiB"
    anyio.run(run, args)


if __name__ == "__main__":
    main()
