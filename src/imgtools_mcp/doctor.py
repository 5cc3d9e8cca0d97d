"""`imgtools-mcp doctor`: what the engine detects and would choose, and whether the VLM answers."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import httpx

from .config import Settings


def _vlm_check(settings: Settings) -> dict[str, Any]:
    key = settings.vlm_api_key.get_secret_value() if settings.vlm_api_key else None
    info: dict[str, Any] = {
        "base_url": settings.vlm_base_url,
        "model": settings.vlm_model,
        "key_set": key is not None,
    }
    if key is None and "openrouter.ai" in settings.vlm_base_url:
        info["reachable"] = False
        info["detail"] = "no key: set OPENROUTER_API_KEY (or IMGTOOLS_VLM_API_KEY); image tools work without it"
        return info
    try:
        response = httpx.get(
            settings.vlm_base_url.rstrip("/") + "/models",
            headers={"Authorization": f"Bearer {key or 'not-needed'}"},
            timeout=5.0,
        )
        info["reachable"] = response.status_code < 500
        info["detail"] = f"GET /models -> HTTP {response.status_code}"
    except httpx.HTTPError as exc:
        info["reachable"] = False
        info["detail"] = f"{type(exc).__name__}: {exc}"
    return info


def backend_report(facts: Any) -> dict[str, Any]:
    """Every backend and whether it can run on this device, with the reason where it cannot."""
    from .engine.backends import backend_classes

    report: dict[str, Any] = {}
    for backend_id, cls in backend_classes().items():
        why = cls.unavailable(facts)
        report[backend_id] = {"available": why is None, **({"reason": why} if why else {})}
    return report


def collect(settings: Settings) -> dict[str, Any]:
    from .engine.choice import choose_backend, choose_dtype
    from .engine.device import detect_devices, installed_backends, probe

    report: dict[str, Any] = {"devices": [dataclasses.asdict(d) for d in detect_devices()]}
    facts = probe(settings.device)
    report["device"] = facts.torch_device
    dtype = choose_dtype(facts, settings.dtype)
    report["dtype"] = {"value": dtype.value, "reason": dtype.reason}
    report["backends_installed"] = sorted(installed_backends())
    model: dict[str, Any] = {"spec": settings.model}
    family_name = "sd1"
    try:
        from .engine.loader import inspect_family, resolve_model

        source = resolve_model(settings.model, model_dirs=settings.model_dirs, offline=True)
        family = inspect_family(source)
        family_name = family.family.value
        model.update(kind=source.kind, path=str(source.path), **family.as_dict())
    except Exception as exc:  # doctor reports every problem instead of stopping at the first
        model["problem"] = str(exc)
    report["model"] = model
    backend = choose_backend(facts, settings.backend, available=installed_backends(), family=family_name)
    report["backend"] = {"value": backend.value, "reason": backend.reason}
    report["backends"] = backend_report(facts)
    report["cache_dir"] = str(settings.cache_dir)
    report["output_dir"] = str(settings.output_dir)
    report["input_roots"] = [str(p) for p in settings.allowed_input_roots]
    report["vlm"] = _vlm_check(settings)
    return report


def doctor(settings: Settings, as_json: bool = False) -> int:
    report = collect(settings)
    if as_json:
        print(json.dumps(report, indent=2, default=str))
        return 0
    print(f"device:   {report['device']}")
    for device in report["devices"]:
        print(f"  - {device['kind']} {device['name']}: {device['total_memory_bytes'] / 2**30:.1f} GiB total, "
              f"{device['free_memory_bytes'] / 2**30:.1f} GiB free, bf16={device['supports_bf16']}")
    print(f"dtype:    {report['dtype']['value']} — {report['dtype']['reason']}")
    print(f"backend:  {report['backend']['value']} — {report['backend']['reason']} (installed: {', '.join(report['backends_installed'])})")
    for backend_id, entry in report["backends"].items():
        print(f"  - {backend_id}: {'available' if entry['available'] else 'not available: ' + entry['reason']}")
    print(f"cache:    {report['cache_dir']} (compiled backend models)")
    model = report["model"]
    if "problem" in model:
        print(f"model:    {model['spec']} — PROBLEM: {model['problem']}")
    else:
        print(f"model:    {model['spec']} ({model['kind']}, {model['family']}, native {model['native_size']}px, turbo={model['turbo']})")
    print(f"outputs:  {report['output_dir']}")
    vlm = report["vlm"]
    print(f"vlm:      {vlm['model']} at {vlm['base_url']} — key {'set' if vlm['key_set'] else 'not set'}; "
          f"{'reachable' if vlm['reachable'] else 'NOT reachable'} ({vlm['detail']})")
    return 0
