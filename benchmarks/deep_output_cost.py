"""What the UNet IR's second output (its deep feature, for DeepCache) costs a plain step: one output vs two.

Real-size SD 1.5 UNet (random weights) in the engine's dtype, converted twice with the engine's own converter:
as the engine does now (`traceable_unet`: noise prediction + deep feature) and with the noise prediction only
(as before DeepCache on OpenVINO). Both are compiled for 512² with CFG (batch 2) before anything is timed, then
stepped turn by turn, so neither gains from compile order or a drifting machine.

    .venv/bin/python benchmarks/deep_output_cost.py [--rounds 4] [--steps 2]

Writes benchmarks/results/deep_output_cost.json and .md.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch
from common import SD15_UNET, log, save_results


class _NoiseOnly(torch.nn.Module):
    def __init__(self, unet: torch.nn.Module) -> None:
        super().__init__()
        self.unet = unet

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor, encoder_hidden_states: torch.Tensor) -> torch.Tensor:
        dtype = self.unet.dtype
        return self.unet(sample.to(dtype), timestep, encoder_hidden_states.to(dtype), return_dict=False)[0].float()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--steps", type=int, default=2, help="UNet calls per round and variant")
    args = parser.parse_args()

    import openvino as ov
    from diffusers import UNet2DConditionModel

    from imgtools_mcp.engine.backends.openvino_backend import compile_options, convert_module, traceable_unet
    from imgtools_mcp.engine.device import probe

    facts = probe("cpu")
    precision = "bf16" if facts.supports_bf16 else "f32"
    torch.manual_seed(0)
    unet = UNet2DConditionModel.from_config(SD15_UNET).to(torch.bfloat16 if facts.supports_bf16 else torch.float32).eval()
    module, example, inputs = traceable_unet(unet, sdxl=False)
    core = ov.Core()
    feeds = {"sample": np.random.default_rng(0).standard_normal((2, 4, 64, 64), dtype=np.float32),
             "timestep": np.asarray([500.0], dtype=np.float32),
             "encoder_hidden_states": np.random.default_rng(1).standard_normal((2, 77, 768), dtype=np.float32)}  # fmt: skip
    variants = {}
    for name, wrapper in (("noise + deep feature (engine)", module), ("noise only (before)", _NoiseOnly(unet))):
        log(f"converting and compiling: {name}")
        model = convert_module(wrapper, example, inputs)
        model.reshape({key: list(value.shape) for key, value in feeds.items()})
        compiled = core.compile_model(model, "CPU", compile_options(precision))
        variants[name] = (compiled.create_infer_request(), len(model.outputs))
    seconds: dict[str, list[float]] = {name: [] for name in variants}
    outputs: dict[str, np.ndarray] = {}
    for request, _ in variants.values():  # one untimed call each
        request.infer(feeds)
    for round_index in range(args.rounds):
        for name, (request, count) in variants.items():
            started = time.perf_counter()
            for _ in range(args.steps):
                request.infer(feeds, share_inputs=True)
                kept = [np.array(request.get_output_tensor(i).data, copy=True) for i in range(count)]
            seconds[name].append((time.perf_counter() - started) / args.steps)
            outputs[name] = kept[0]
            log(f"round {round_index + 1}, {name}: {seconds[name][-1]:.2f} s per step")
    names = list(variants)
    report = {
        "unet": "SD 1.5, random weights", "shape": "512x512, CFG batch 2", "precision": precision,
        "rounds": args.rounds, "steps_per_round": args.steps, "seconds_per_step": seconds,
        "median_s": {name: statistics.median(values) for name, values in seconds.items()},
        "outputs": {name: count for name, (_, count) in variants.items()},
        "noise_prediction_max_difference": float(np.abs(outputs[names[0]] - outputs[names[1]]).max()),
        "machine": {"cpu": facts.name, "cores": facts.cpu_cores},
    }  # fmt: skip
    print(save_results("deep_output_cost", report, table(report)))


def table(report: dict) -> str:
    medians = report["median_s"]
    (engine, before) = list(medians)
    lines = [
        "# The UNet IR's deep-feature output: its cost to a plain step",
        "",
        f"{report['unet']}, OpenVINO {report['precision']}, {report['shape']}, static shapes; both compiled before timing, "
        f"then {report['rounds']} rounds of {report['steps_per_round']} calls each, turn by turn. Machine: "
        f"{report['machine']['cpu']}, {report['machine']['cores']} cores.",
        "",
        "| IR | outputs | s per step (median) | runs |",
        "|---|---:|---:|---|",
    ]
    for name, median in medians.items():
        runs = ", ".join(f"{s:.2f}" for s in report["seconds_per_step"][name])
        lines.append(f"| {name} | {report['outputs'][name]} | {median:.2f} | {runs} |")
    lines += ["", f"Two outputs vs one: {medians[engine] / medians[before]:.3f}× the time per step; the noise predictions "
                  f"differ by at most {report['noise_prediction_max_difference']:.3g}."]  # fmt: skip
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
