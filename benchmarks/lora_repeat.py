"""Repeated LoRA requests through the MCP server: per-request seconds, live tensors, RSS and adapters loaded.

    python benchmarks/lora_repeat.py                     # tiny model and tiny LoRA built in a temp folder
    python benchmarks/lora_repeat.py --model DIR --lora FILE --size 512 --steps 20

Three phases of N requests each, same seed: no LoRA, the LoRA at weight 1, and alternating
(LoRA on even requests, off on odd ones). Growth shows as rising seconds, tensors or RSS within a
phase; a leak between requests shows as alternate rows of the third phase differing from phase 1/2.
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
import numpy as np
import psutil
import torch
from PIL import Image

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def live_tensors() -> tuple[int, int]:
    gc.collect()
    count, storages = 0, {}
    for obj in gc.get_objects():
        if isinstance(obj, torch.Tensor) and obj.device.type != "meta":
            count += 1
            storages[obj.untyped_storage().data_ptr()] = obj.untyped_storage().nbytes()
    return count, sum(storages.values())


async def run(args: argparse.Namespace) -> None:
    from mcp import Client

    from imgtools_mcp.config import Settings
    from imgtools_mcp.testing.files import make_test_lora
    from imgtools_mcp.testing import make_test_model
    from imgtools_mcp.server import build_server

    work = Path(tempfile.mkdtemp(prefix="lora-repeat-"))
    model = args.model or str(make_test_model(work / "tiny-sd15", "sd15"))
    lora = Path(args.lora) if args.lora else make_test_lora(model, work / "loras" / "tiny_style.safetensors")
    settings = Settings(model=model, output_dir=work / "out", device=args.device, lora_dirs=[lora.parent], hf_offline=True)
    base = {"prompt": "a lighthouse at dusk", "width": args.size, "height": args.size, "steps": args.steps, "seed": 7}
    with_lora = {**base, "loras": [{"name": lora.stem, "weight": 1.0}]}
    process = psutil.Process()
    images: dict[str, list[np.ndarray]] = {}
    async with Client(build_server(settings)) as client:
        await client.call_tool("generate", base)  # load the model once before measuring
        print(f"model {model}, LoRA {lora.name}, {args.size}px, {args.steps} steps, device {args.device}")
        print(f"{'phase':<11} {'#':>2} {'lora':>4} {'wall_s':>7} {'gen_s':>7} {'tensors':>8} {'tensor_MiB':>10} {'rss_MiB':>8} adapters")
        for phase in ("plain", "lora", "alternate"):
            seconds = []
            for index in range(args.requests):
                use = phase == "lora" or (phase == "alternate" and index % 2 == 0)
                started = time.perf_counter()
                result = await client.call_tool("generate", with_lora if use else base)
                wall = time.perf_counter() - started
                if result.is_error:
                    raise SystemExit(result.content[0].text)
                generate_s = result.structured_content["timings"]["generate_s"]
                seconds.append(generate_s)
                path = result.structured_content["images"][0]["path"]
                images.setdefault(f"{phase}:{use}", []).append(np.asarray(Image.open(path).convert("RGB")))
                count, tensor_bytes = live_tensors()
                status = (await client.call_tool("engine_status", {})).structured_content
                adapters = status["loaded_models"][0]["loras_loaded"]
                print(
                    f"{phase:<11} {index:>2} {'on' if use else 'off':>4} {wall:>7.3f} {generate_s:>7.3f} {count:>8} "
                    f"{tensor_bytes / 2**20:>10.2f} {process.memory_info().rss / 2**20:>8.1f} {','.join(adapters) or '-'}"
                )
            half = len(seconds) // 2
            print(
                f"  {phase}: median {statistics.median(seconds):.3f} s; first half {statistics.mean(seconds[:half]):.3f} s, "
                f"second half {statistics.mean(seconds[half:]):.3f} s"
            )
    reference = {False: images["plain:False"][0], True: images["lora:True"][0]}
    identical = all(np.array_equal(img, reference[key.endswith("True")]) for key, imgs in images.items() for img in imgs)
    print(f"every LoRA-off image identical to the plain one and every LoRA-on image to the first LoRA one: {identical}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="diffusers folder or checkpoint (default: a tiny test model)")
    parser.add_argument("--lora", help=".safetensors LoRA (default: a tiny test LoRA)")
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--requests", type=int, default=10)
    parser.add_argument("--device", default="auto")
    anyio.run(run, parser.parse_args())


if __name__ == "__main__":
    main()
