"""Ray Serve replicas: throughput of N concurrent clients with 1 vs 2 replicas, and the Ray path's added time per call.

A local Ray instance (one logical CPU per replica, each replica's torch pinned to one thread) serves
the tiny random-weight SD 1.5 test pipeline (built locally, nothing downloaded); the MCP front runs
in this process with IMGTOOLS_ENGINE=ray and clients call `generate` through the in-process MCP client.

- Throughput: `--clients` concurrent clients each make `--calls` calls; images per second with one
  replica, then with two (target: two replicas >= 1.8x one). On a machine with GPUs pass
  `--gpus-per-replica 1 --replicas-max <GPUs>` for one replica per GPU.
- Added time: the same request in turns on the local engine (this process, torch on one thread) and
  through one Ray replica; the difference of the medians, and the median of what each Ray call spent
  outside the replica's own queue/load/denoise time (`timings.ray_overhead_s`: routing, transfer,
  PNG encode/decode). It is set against a 512x512 SD-turbo call on this machine (one UNet step plus
  the VAE; `--turbo-call-s`, default 4 s: the engine's choice on this 2-core bf16 CPU runs a UNet step
  at batch 1 in about 1.0 s and the VAE decode in 2.9 s, benchmarks/results/unet_step-sd15.md).

    .venv/bin/python benchmarks/scale.py [--clients 4] [--calls 2] [--size 128] [--steps 8] [--rounds 5]

Writes benchmarks/results/scale.json and .md (or scale-<suffix> with --suffix).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import anyio
from common import log, save_results


def cpu_load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.1f} / {five:.1f} / {fifteen:.1f} on {os.cpu_count()} CPU(s)"


async def throughput(settings, clients: int, calls: int, request: dict) -> dict:
    from mcp import Client

    from imgtools_mcp.server import build_server

    done: list[float] = []
    async with Client(build_server(settings)) as client:
        # One untimed round of concurrent calls: a busy replica's requests spill to the others, so every
        # replica loads the model before the clock starts.
        async def warm(index: int) -> None:
            result = await client.call_tool("generate", {**request, "seed": index})
            assert not result.is_error, result.content

        async with anyio.create_task_group() as tg:
            for index in range(clients):
                tg.start_soon(warm, index)
        replicas = (await client.call_tool("engine_status", {})).structured_content["replicas"]
        cold = [r["replica"] for r in replicas if r["state"] == "running" and not r["loaded"]]
        if cold:
            log(f"replicas {cold} did not load the model in the warm-up round; their first call is timed")
        started = time.perf_counter()

        async def one_client(index: int) -> None:
            for call in range(calls):
                result = await client.call_tool("generate", {**request, "seed": 100 * index + call})
                assert not result.is_error, result.content
                done.append(time.perf_counter() - started)

        async with anyio.create_task_group() as tg:
            for index in range(clients):
                tg.start_soon(one_client, index)
        wall = time.perf_counter() - started
    return {"images": len(done), "wall_s": round(wall, 3), "images_per_s": round(len(done) / wall, 4)}


async def latency(local_settings, ray_settings, rounds: int, request: dict) -> dict:
    from mcp import Client

    from imgtools_mcp.server import build_server

    walls: dict[str, list[float]] = {"local": [], "ray": []}
    outside: list[float] = []
    async with Client(build_server(local_settings)) as local, Client(build_server(ray_settings)) as remote:
        for client in (local, remote):
            await client.call_tool("generate", {**request, "seed": 0})  # warm: model loaded on both
        for round_ in range(rounds):
            for name, client in (("local", local), ("ray", remote)):
                started = time.perf_counter()
                result = await client.call_tool("generate", {**request, "seed": round_})
                walls[name].append(time.perf_counter() - started)
                assert not result.is_error, result.content
                if name == "ray":
                    outside.append(result.structured_content["timings"]["ray_overhead_s"])
    local_s, ray_s = statistics.median(walls["local"]), statistics.median(walls["ray"])
    return {
        "local_median_s": round(local_s, 4),
        "ray_median_s": round(ray_s, 4),
        "added_s": round(ray_s - local_s, 4),
        "ray_outside_replica_median_s": round(statistics.median(outside), 4),
        "rounds": rounds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--calls", type=int, default=2, help="calls per client")
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=5, help="turns of the latency comparison")
    parser.add_argument("--replicas-max", type=int, default=2)
    parser.add_argument("--gpus-per-replica", type=float, default=0.0)
    parser.add_argument("--turbo-call-s", type=float, default=4.0,
                        help="a 512x512 SD-turbo call here: one SD 1.5 UNet step with no guidance plus VAE decode")
    parser.add_argument("--suffix", default="")
    args = parser.parse_args()

    import ray
    import torch
    from ray import serve

    from imgtools_mcp.config import Settings
    from imgtools_mcp.engine.ray_deployment import DeploymentSize, deploy
    from imgtools_mcp.testing import make_test_model

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("IMGTOOLS_BACKEND", "torch")  # replicas and the local engine on the same backend
    torch.set_num_threads(1)  # the local engine gets what each replica gets
    load_before = cpu_load()
    work = Path(tempfile.mkdtemp(prefix="imgtools-scale-"))
    model = make_test_model(work / "tiny-sd15", "sd15")
    request = {"prompt": "a lighthouse at dusk", "width": args.size, "height": args.size, "steps": args.steps,
               "guidance_scale": 7.0, "sampler": "euler"}  # fmt: skip
    base = Settings(model=str(model), output_dir=work / "out", device="auto" if args.gpus_per_replica else "cpu",
                    hf_offline=True, backend="torch", max_queue=64)  # fmt: skip
    cpus = max(args.replicas_max, 1)
    started = time.perf_counter()
    ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False, namespace="imgtools-bench")
    log(f"ray up in {time.perf_counter() - started:.1f} s; {cpu_load()}")
    rows = {}
    try:
        for replicas in sorted({1, args.replicas_max}):
            app = f"scale-{replicas}"
            size = DeploymentSize(replicas=replicas, num_cpus=1, num_gpus=args.gpus_per_replica,
                                  torch_threads=None if args.gpus_per_replica else 1, max_queued_requests=64)  # fmt: skip
            deploy(base, size, app_name=app)
            ray_settings = base.model_copy(update={"engine": "ray", "ray_app": app, "output_dir": work / app})
            log(f"{replicas} replica(s) up; {args.clients} clients x {args.calls} calls")
            rows[replicas] = anyio.run(throughput, ray_settings, args.clients, args.calls, request)
            log(f"{replicas} replica(s): {rows[replicas]}")
            if replicas == 1:
                local_settings = base.model_copy(update={"output_dir": work / "local"})
                added = anyio.run(latency, local_settings, ray_settings, args.rounds, request)
                log(f"added time: {added}")
            serve.delete(app)
    finally:
        serve.shutdown()
        ray.shutdown()
    load_after = cpu_load()
    one, most = rows[1], rows[max(rows)]
    speedup = most["images_per_s"] / one["images_per_s"]
    share = added["ray_outside_replica_median_s"] / args.turbo_call_s
    report = {
        "request": request, "clients": args.clients, "calls_per_client": args.calls, "throughput": rows,
        "speedup": round(speedup, 3), "added": added, "turbo_call_s": args.turbo_call_s,
        "outside_replica_share_of_turbo_call": round(share, 5), "load_before": load_before, "load_after": load_after,
        "torch": torch.__version__, "ray": ray.__version__,
    }  # fmt: skip
    markdown = "\n".join([
        "# Ray Serve replicas: throughput and added time per call",
        "",
        f"Request: tiny random-weight SD 1.5 test pipeline, {args.size}x{args.size}, {args.steps} euler steps, "
        f"guidance 7.0, torch backend, fp32 on CPU; each replica 1 logical CPU and 1 torch thread; "
        f"{args.clients} concurrent MCP clients x {args.calls} calls (after an untimed warm-up round).",
        "",
        "| replicas | images | wall s | images/s | vs 1 replica |",
        "|---:|---:|---:|---:|---:|",
        *[f"| {n} | {r['images']} | {r['wall_s']:.2f} | {r['images_per_s']:.3f} | {r['images_per_s'] / one['images_per_s']:.2f}x |"
          for n, r in sorted(rows.items())],
        "",
        f"Added time per call (medians of {added['rounds']} turns, local engine vs one Ray replica, same request):",
        f"- local engine {added['local_median_s']:.3f} s, Ray {added['ray_median_s']:.3f} s: "
        f"{added['added_s'] * 1000:+.0f} ms per call (includes run-to-run noise of the shared CPU)",
        f"- outside the replica's own queue/load/denoise (routing, transfer, PNG encode/decode): "
        f"{added['ray_outside_replica_median_s'] * 1000:.0f} ms = {share:.2%} of a 512x512 SD-turbo call here "
        f"(~{args.turbo_call_s:g} s)",
        "",
        f"Machine: {os.cpu_count()} CPU(s); {load_before} before, {load_after} after. "
        "Other work on this machine competes for the same cores, so the speed-up is a lower bound of what "
        "two idle cores give.",
        "",
    ])  # fmt: skip
    print(save_results("scale" + (f"-{args.suffix}" if args.suffix else ""), report, markdown))


if __name__ == "__main__":
    main()
