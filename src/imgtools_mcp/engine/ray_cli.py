"""`imgtools-mcp engine-serve` (deploy ImageEngine replicas on Ray Serve) and the start-up check for IMGTOOLS_ENGINE=ray.

Nothing here imports Ray until a command needs it, so the CLI works without the `ray` extra.
"""

from __future__ import annotations

import argparse
import sys
import threading
from typing import Any

from .ray_engine import RAY_MISSING, probe_address


def require_engine(settings: Any) -> None:
    """For IMGTOOLS_ENGINE=ray: Ray Serve installed, the cluster reachable and the app deployed, or one ValueError line.

    Run before serving, so a stdio host sees the reason at start rather than a failed first call.
    """
    if getattr(settings, "engine", "local") != "ray":
        return
    from .ray_engine import connect

    connect(settings)


def add_engine_serve_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("replicas (what each ImageEngine replica reserves)")
    group.add_argument("--replicas", type=int, default=None, metavar="N",
                       help="number of replicas (default: one per GPU of the cluster, else 1)")
    group.add_argument("--num-gpus", type=float, default=None, metavar="N",
                       help="GPUs per replica (default: 1 where the cluster has GPUs, else 0)")
    group.add_argument("--num-cpus", type=float, default=1.0, metavar="N", help="CPUs per replica (default 1)")
    group.add_argument("--models-per-replica", type=int, default=2, metavar="N",
                       help="models each replica keeps loaded (Serve's multiplexing LRU; default 2)")
    group.add_argument("--torch-threads", type=int, default=None, metavar="N",
                       help="torch threads per replica (CPU replicas: set to --num-cpus)")
    group.add_argument("--max-ongoing-requests", type=int, default=1, metavar="N",
                       help="requests a replica takes at once; 1 = one denoising job per device, the rest queue at "
                       "the router, which then sends each to a free replica holding its model (default 1)")
    group.add_argument("--detach", action="store_true",
                       help="deploy and exit, leaving the replicas on the cluster (needs --ray-address)")


def _size_for(settings: Any, args: argparse.Namespace, cluster_gpus: float):
    from .ray_deployment import DeploymentSize

    num_gpus = args.num_gpus if args.num_gpus is not None else (1.0 if cluster_gpus >= 1 else 0.0)
    if args.replicas is not None:
        replicas = args.replicas
    elif num_gpus > 0:
        replicas = max(int(cluster_gpus // num_gpus), 1)
    else:
        replicas = 1
    for name, value in (("replicas", replicas), ("models-per-replica", args.models_per_replica),
                        ("max-ongoing-requests", args.max_ongoing_requests)):
        if value < 1:
            raise ValueError(f"--{name}: at least 1 (got {value})")
    return DeploymentSize(
        replicas=replicas,
        num_gpus=num_gpus,
        num_cpus=args.num_cpus,
        models_per_replica=args.models_per_replica,
        torch_threads=args.torch_threads,
        max_ongoing_requests=args.max_ongoing_requests,
        max_queued_requests=settings.max_queue,
    )


def engine_serve(settings: Any, args: argparse.Namespace) -> int:
    """Deploy the ImageEngine app on the cluster at IMGTOOLS_RAY_ADDRESS (or a local Ray started here) and serve."""
    try:
        import ray

        from .ray_deployment import deploy
    except ImportError:
        raise ValueError(RAY_MISSING.replace("IMGTOOLS_ENGINE=ray", "engine-serve")) from None
    if args.detach and not settings.ray_address:
        raise ValueError("--detach: needs --ray-address (a local Ray started here stops when this command does)")
    if settings.ray_address:
        probe_address(settings.ray_address)
        ray.init(address=settings.ray_address, log_to_driver=False)
    else:
        ray.init(log_to_driver=False)
    size = _size_for(settings, args, ray.cluster_resources().get("GPU", 0.0))
    deploy(settings, size, app_name=settings.ray_app)
    print(
        f"imgtools-mcp: Serve app {settings.ray_app!r} ready: {size.replicas} ImageEngine replica(s), "
        f"{size.num_gpus:g} GPU and {size.num_cpus:g} CPU each, up to {size.models_per_replica} model(s) each; "
        f"point the front at it with IMGTOOLS_ENGINE=ray IMGTOOLS_RAY_ADDRESS={settings.ray_address or 'auto'}",
        file=sys.stderr,
    )
    if args.detach:
        return 0
    try:
        threading.Event().wait()  # the replicas live as long as this Ray instance; Ctrl-C stops them
    except KeyboardInterrupt:
        from ray import serve

        serve.delete(settings.ray_app)
        return 0
    return 0
