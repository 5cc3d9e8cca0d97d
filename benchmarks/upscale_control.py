"""Upscale seconds per output megapixel (Lanczos; a tiny and a Real-ESRGAN-size random RRDBNet through spandrel, tiled),
and ControlNet's cost per denoising step against none on the engine, both on this machine's device.

    python benchmarks/upscale_control.py [--device cpu] [--input 64] [--repeats 2]
    python benchmarks/upscale_control.py --real-size [--rounds 3]     # only the real-size ControlNet section
    python benchmarks/upscale_control.py --real-size --tiny-check     # the same code on a tiny UNet; writes nothing

Weights are random (no download): speed depends on the architecture's shape, not on what the weights learned.
The ControlNet comparison runs on a tiny SD 1.5 (from_unet of its UNet): on a real SD 1.5 a ControlNet is about
the encoder half of the UNet again, so its share per step is larger than on the tiny one.

--real-size measures that directly on the SD 1.5 UNet built from its real config and ControlNetModel.from_unet of it
(the lllyasviel SD 1.5 ControlNet layout), bf16 torch, 512² (latents 64×64), CFG batch 2, text 77×768: one denoising
step is the ControlNet(s) then the UNet with their residuals, two ControlNets combined by diffusers'
MultiControlNetModel (residuals summed). The three variants run interleaved (A, B, C, A, B, C, ...) after one warm-up
each; medians are reported with the load average at start and end. Its rows are added to the result files as their
own section, leaving the other rows as they are.
"""

from __future__ import annotations

import argparse
import json
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

from common import RESULTS, SD15_UNET, log, save_results
from unet_step import interleaved

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


REAL_SECTION = "## ControlNet cost per step on a real-size SD 1.5"
# The tiny check keeps SD 1.5's block layout and shrinks its widths and depth, so the same code path runs in seconds.
TINY_SD15_UNET = {**SD15_UNET, "block_out_channels": [32, 32, 64, 64], "layers_per_block": 1, "cross_attention_dim": 32}


def time_controlnet_real(device: str, rounds: int, tiny: bool) -> dict:
    """Seconds per denoising step of the UNet alone, with one ControlNet and with two, interleaved on the same inputs."""
    from diffusers import ControlNetModel, UNet2DConditionModel
    from diffusers.models.controlnets.multicontrolnet import MultiControlNetModel

    config = TINY_SD15_UNET if tiny else SD15_UNET
    size, tokens, batch, dtype = (64 if tiny else 512), 77, 2, torch.bfloat16
    torch.manual_seed(0)
    unet = UNet2DConditionModel.from_config(config).to(device, dtype).eval()
    nets = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        nets.append(ControlNetModel.from_unet(unet).to(device, dtype).eval())
    multi = MultiControlNetModel(nets)
    generator = torch.Generator().manual_seed(0)
    latents = torch.randn(batch, 4, size // 8, size // 8, generator=generator).to(device, dtype)
    context = torch.randn(batch, tokens, config["cross_attention_dim"], generator=generator).to(device, dtype)
    # The pipeline hands each ControlNet its image at the output size, in [0, 1], repeated for both CFG halves.
    images = [torch.rand(1, 3, size, size, generator=generator).repeat(batch, 1, 1, 1).to(device, dtype) for _ in nets]
    timestep = torch.tensor([500.0], device=device)

    def unet_step(down=None, mid=None) -> torch.Tensor:
        return unet(latents, timestep, encoder_hidden_states=context, down_block_additional_residuals=down,
                    mid_block_additional_residual=mid, return_dict=False)[0]

    def none() -> torch.Tensor:
        return unet_step()

    def one() -> torch.Tensor:
        down, mid = nets[0](latents, timestep, encoder_hidden_states=context, controlnet_cond=images[0],
                            conditioning_scale=1.0, return_dict=False)
        return unet_step(down, mid)

    def two() -> torch.Tensor:
        down, mid = multi(latents, timestep, encoder_hidden_states=context, controlnet_cond=images,
                          conditioning_scale=[1.0, 0.5], return_dict=False)
        return unet_step(down, mid)

    variants = {"UNet alone": none, "UNet + 1 ControlNet": one, "UNet + 2 ControlNets (MultiControlNet)": two}
    load_start = os.getloadavg()
    with torch.inference_mode():
        times = interleaved(variants, rounds)
    load_end = os.getloadavg()
    base = statistics.median(times["UNet alone"])
    rows = [{"variant": name, "s_per_step": round(statistics.median(t), 3), "min_s": round(min(t), 3),
             "max_s": round(max(t), 3), "n": len(t), "vs_unet_alone": round(statistics.median(t) / base, 2)}
            for name, t in times.items()]
    return {
        "model": "tiny SD 1.5 layout (check)" if tiny else "SD 1.5 UNet (real config) + ControlNetModel.from_unet",
        "unet_parameters": sum(p.numel() for p in unet.parameters()),
        "controlnet_parameters": sum(p.numel() for p in nets[0].parameters()),
        "size": f"{size}x{size}", "latents": f"{size // 8}x{size // 8}", "batch": batch, "text_context": f"{tokens}x{config['cross_attention_dim']}",
        "dtype": "bf16", "backend": "torch", "device": device, "torch_threads": torch.get_num_threads(), "rounds": rounds,
        "load_average_start": [round(x, 2) for x in load_start], "load_average_end": [round(x, 2) for x in load_end],
        "rows": rows,
        "note": "random weights; one step = ControlNet(s) + UNet forward, scheduler step left out (negligible); "
                "interleaved rounds after one warm-up each, medians",
    }


def real_size_markdown(result: dict) -> str:
    start, end = result["load_average_start"], result["load_average_end"]
    lines = [REAL_SECTION, "",
             f"{result['model']}: UNet {result['unet_parameters'] / 1e6:.0f} M parameters, each ControlNet "
             f"{result['controlnet_parameters'] / 1e6:.0f} M; {result['size']} (latents {result['latents']}), CFG batch "
             f"{result['batch']}, text context {result['text_context']}, {result['dtype']} {result['backend']} on "
             f"{result['device']} ({result['torch_threads']} threads). Medians of {result['rounds']} interleaved rounds after "
             f"one warm-up each. Load average (1/5/15 min) at start {start[0]}/{start[1]}/{start[2]}, at end "
             f"{end[0]}/{end[1]}/{end[2]}.", "",
             "| variant | s per step (median) | min s | max s | vs UNet alone |", "|---|---:|---:|---:|---:|"]
    lines += [f"| {r['variant']} | {r['s_per_step']} | {r['min_s']} | {r['max_s']} | {r['vs_unet_alone']}x |" for r in result["rows"]]
    lines += ["", result["note"] + "."]
    return "\n".join(lines) + "\n"


def save_real_size(result: dict, stem: str) -> str:
    """Put the real-size section into the existing result files, replacing an earlier one and keeping everything else."""
    json_path, md_path = RESULTS / f"{stem}.json", RESULTS / f"{stem}.md"
    report = json.loads(json_path.read_text()) if json_path.exists() else {}
    report["controlnet_real_size"] = result
    markdown = md_path.read_text() if md_path.exists() else ""
    markdown = markdown.split(REAL_SECTION)[0].rstrip("\n")
    markdown = (markdown + "\n\n" if markdown else "") + real_size_markdown(result)
    return save_results(stem, report, markdown)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--input", type=int, default=64, help="input side in pixels (upscaled 4x)")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--real-size", action="store_true",
                        help="only the ControlNet cost per step on a real-size SD 1.5 (bf16, 512², CFG batch 2), added to the results")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved timed rounds for --real-size")
    parser.add_argument("--tiny-check", action="store_true", help="with --real-size: run its code on a tiny UNet and write nothing")
    args = parser.parse_args()
    stem = "upscale_control" if args.device == "cpu" else f"upscale_control-{args.device.split(':')[0]}"
    if args.real_size:
        result = time_controlnet_real(args.device, args.rounds, args.tiny_check)
        print(real_size_markdown(result) if args.tiny_check else save_real_size(result, stem))
        return
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
    earlier = RESULTS / f"{stem}.json"
    if earlier.exists() and "controlnet_real_size" in (kept := json.loads(earlier.read_text())):
        # The real-size section takes minutes to measure and is run on its own (--real-size); a default run keeps it.
        report["controlnet_real_size"] = kept["controlnet_real_size"]
        lines += ["", real_size_markdown(kept["controlnet_real_size"]).rstrip("\n")]
    print(save_results(stem, report, "\n".join(lines) + "\n"))


if __name__ == "__main__":
    main()
