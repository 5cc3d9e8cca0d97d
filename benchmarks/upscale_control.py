"""Upscale seconds per output megapixel (Lanczos; a tiny and a Real-ESRGAN-size random RRDBNet through spandrel, tiled),
and ControlNet's cost per denoising step against none on the engine, both on this machine's device.

    python benchmarks/upscale_control.py [--device cpu] [--input 64] [--repeats 2]

Weights are random (no download): speed depends on the architecture's shape, not on what the weights learned.
The ControlNet comparison runs on a tiny SD 1.5 (from_unet of its UNet): on a real SD 1.5 a ControlNet is about
the encoder half of the UNet again, so its share per step is larger than on the tiny one.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import anyio
import numpy as np
import torch
from PIL import Image

from common import log, save_results

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def picture(size: int) -> Image.Image:
    rng = np.random.default_rng(0)
    ramp = np.linspace(0, 255, size, dtype=np.float32)
    pixels = np.stack([np.tile(ramp, (size, 1)), np.tile(ramp[:, None], (1, size)), rng.random((size, size)) * 255], axis=-1)
    return Image.fromarray(pixels.astype(np.uint8), "RGB")


def time_upscalers(folder: Path, device: str, size: int, repeats: int) -> list[dict]:
    from imgtools_mcp.engine.upscale import UpscalerSource, lanczos, load_upscaler
    from imgtools_mcp.testing.tiny_upscaler import make_test_upscaler

    image = picture(size)
    out_mp = (size * 4) ** 2 / 1e6
    rows = []
    started = time.perf_counter()
    for _ in range(repeats):
        lanczos(image, 4)
    rows.append({"upscaler": "Lanczos", "input": f"{size}x{size}", "scale": 4, "tile": None,
                 "s_per_output_mp": round((time.perf_counter() - started) / repeats / out_mp, 4)})
    shapes = {"tiny RRDBNet (16 features, 1 block)": dict(features=16, blocks=1),
              "Real-ESRGAN x4plus size (64 features, 23 blocks)": dict(features=64, blocks=23)}
    for label, shape in shapes.items():
        path = make_test_upscaler(folder / f"{shape['features']}-{shape['blocks']}.safetensors", **shape)
        model = load_upscaler(UpscalerSource(label, path, label, "file"), device, torch.float32)
        params = sum(p.numel() for p in model.descriptor.model.parameters())
        for tile in (size, size // 2):
            model.upscale(image, 4, tile=tile, overlap=8 if tile < size else 0)  # warm-up
            times = []
            for _ in range(repeats):
                started = time.perf_counter()
                model.upscale(image, 4, tile=tile, overlap=8 if tile < size else 0)
                times.append(time.perf_counter() - started)
            rows.append({"upscaler": label, "parameters": params, "input": f"{size}x{size}", "scale": 4, "tile": tile,
                         "s_per_output_mp": round(statistics.median(times) / out_mp, 3)})
            log(f"{label} tile {tile}: {rows[-1]['s_per_output_mp']} s/MP")
    return rows


async def time_controlnet(folder: Path, device: str, steps: int, repeats: int) -> list[dict]:
    from PIL import ImageDraw

    from imgtools_mcp.config import Settings
    from imgtools_mcp.engine.control import ControlInput
    from imgtools_mcp.engine.engine import Engine
    from imgtools_mcp.engine.request import EngineRequest
    from imgtools_mcp.images.control_maps import make_control_map
    from imgtools_mcp.testing import make_test_model
    from imgtools_mcp.testing.tiny_controlnet import make_test_controlnet

    model = make_test_model(folder / "tiny-sd15", "sd15")
    make_test_controlnet(model, folder / "controlnets" / "control_v11p_sd15_canny")
    engine = Engine(Settings(model=str(model), output_dir=folder / "out", device=device, hf_offline=True, backend="torch",
                             controlnet_dirs=[folder / "controlnets"]))
    drawing = Image.new("RGB", (64, 64), "black")
    ImageDraw.Draw(drawing).ellipse((12, 8, 52, 56), fill="white")
    canny = make_control_map("canny", drawing)
    rows = []
    for label, extra in (("none", {}), ("1 ControlNet (canny)", {"control": [ControlInput("canny", canny)]}),
                         ("2 ControlNets", {"control": [ControlInput("canny", canny), ControlInput("canny", canny, weight=0.5)]})):
        request = EngineRequest(mode="txt2img", model=None, prompt="a ball", width=64, height=64, steps=steps, seeds=[1], extra=extra)
        job = await engine.acheck(request)
        await engine.generate(job)  # warm-up: loads the model, builds the ControlNet pipeline
        times = []
        for _ in range(repeats):
            output = await engine.generate(job)
            times.append(output.timings["generate_s"])
        rows.append({"control": label, "steps": steps, "s_per_step": round(statistics.median(times) / steps, 4)})
        log(f"{label}: {rows[-1]['s_per_step']} s/step")
    base = rows[0]["s_per_step"]
    for row in rows:
        row["vs_none"] = round(row["s_per_step"] / base, 2) if base else None
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--input", type=int, default=64, help="input side in pixels (upscaled 4x)")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as temp:
        folder = Path(temp)
        upscale_rows = time_upscalers(folder, args.device, args.input, args.repeats)
        control_rows = anyio.run(time_controlnet, folder, args.device, args.steps, args.repeats)
    device_name = torch.cuda.get_device_name() if args.device.startswith("cuda") else platform.processor() or platform.machine()
    report = {
        "device": args.device, "device_name": device_name, "cpu_count": os.cpu_count(), "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(), "upscale": upscale_rows, "controlnet": control_rows,
        "note": "random weights; measured on a machine shared with other work, so absolute times carry contention",
    }
    lines = [f"# Upscale and ControlNet cost on {args.device} ({device_name}, {os.cpu_count()} CPUs, torch {torch.__version__})", "",
             "| upscaler | parameters | input | tile | s per output MP |", "|---|---|---|---|---|"]
    lines += [f"| {r['upscaler']} | {r.get('parameters', '-')} | {r['input']} | {r['tile'] or '-'} | {r['s_per_output_mp']} |" for r in upscale_rows]
    lines += ["", "| control (tiny SD 1.5, 64 px) | steps | s per step | vs none |", "|---|---|---|---|"]
    lines += [f"| {r['control']} | {r['steps']} | {r['s_per_step']} | {r['vs_none']}x |" for r in control_rows]
    lines += ["", report["note"] + "."]
    stem = "upscale_control" if args.device == "cpu" else f"upscale_control-{args.device.split(':')[0]}"
    print(save_results(stem, report, "\n".join(lines) + "\n"))


if __name__ == "__main__":
    main()
