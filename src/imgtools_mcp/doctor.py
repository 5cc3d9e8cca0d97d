"""`imgtools-mcp doctor`: what the engine detects and would choose, and whether the VLM answers."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import sys
from pathlib import Path
from typing import Any

import httpx

from .config import Settings

# A HuggingFace repo id (owner/name), which the engine downloads on first use when it is not cached.
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*/[\w.\-]+$")


def offline_reason(settings: Settings) -> str | None:
    """Which setting turned offline mode on, or None when nobody did."""
    if settings.hf_offline:
        return "IMGTOOLS_HF_OFFLINE is set"
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        return "HF_HUB_OFFLINE is set"
    return None


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
    default_spec = settings.model
    if settings.model == "auto":
        from .engine.auto_model import choose_auto_model

        auto = choose_auto_model(facts)
        default_spec = auto.value
        model.update(spec=auto.value, auto_reason=auto.reason)
    try:
        from .engine.loader import inspect_family, resolve_model

        source = resolve_model(default_spec, model_dirs=settings.model_dirs, offline=True)
        family = inspect_family(source)
        family_name = family.family.value
        model.update(kind=source.kind, path=str(source.path), **family.as_dict())
    except Exception as exc:  # doctor reports every problem instead of stopping at the first
        # Doctor never downloads, so it looks in the cache only; that is not offline mode unless a setting says so.
        offline = offline_reason(settings)
        spec = default_spec.strip()
        is_hub_id = bool(_HUB_ID.match(spec)) and not Path(spec).expanduser().exists()
        if is_hub_id and offline is None and "HuggingFace cache" in str(exc):
            model["note"] = f"not downloaded yet: the first image call downloads it (or run `hf download {spec}` now)"
        elif offline is not None and "offline mode is on" in str(exc):
            model["problem"] = str(exc).replace("offline mode is on", f"offline mode is on ({offline})")
        else:
            model["problem"] = str(exc)
    report["model"] = model
    backend = choose_backend(facts, settings.backend, available=installed_backends(), family=family_name)
    report["backend"] = {"value": backend.value, "reason": backend.reason}
    report["backends"] = backend_report(facts)
    report["quantization"] = quantization_report(settings, facts, dtype.value, model, backend.value)
    report["step_cache"] = step_cache_report(model)
    from .engine.backends.fast_path import plan_fast_path

    fast_path = plan_fast_path(facts, settings.torch_compile)
    report["fast_path"] = fast_path.as_dict()
    from .engine.warmup import plan_warmup

    warmup = plan_warmup(settings.warmup, compile_mode=fast_path.compile.value, backend=backend.value, engine=settings.engine)
    report["warmup"] = {"enabled": warmup.value, "reason": warmup.reason}
    report["cache_dir"] = str(settings.cache_dir)
    report["output_dir"] = str(settings.output_dir)
    report["input_roots"] = [str(p) for p in settings.allowed_input_roots]
    report["vlm"] = _vlm_check(settings)
    report["offline"] = offline_reason(settings)
    report["problems"] = problems(report, settings)
    return report


def step_cache_report(model: dict[str, Any]) -> dict[str, Any]:
    """What each request `speed` would do for the default model's family (both kinds when it is not known)."""
    from .engine import families
    from .engine.step_cache import choices_for

    denoiser = None
    if "family" in model:
        try:
            denoiser = families.get(model["family"]).denoiser
        except Exception:  # doctor reports what it can
            denoiser = None
    return {"denoiser": denoiser, "speeds": choices_for(denoiser)}


def quantization_report(settings: Settings, facts: Any, dtype: str, model: dict[str, Any], backend: str = "torch") -> dict[str, Any]:
    """The quantization this machine would choose, on the default model's `backend`: per ladder rung, and for the
    default model where it is local."""
    from .engine.quantize import installed_packages, machine_report

    report = machine_report(facts, settings.quantize, installed=installed_packages(), backend=backend)
    if "path" in model and "family" in model:
        try:
            from .engine import families
            from .engine.choice import DTYPE_BYTES
            from .engine.memory import estimate_activation_bytes
            from .engine.quantize import plan_weights
            from .engine.weights import estimate_footprint

            spec = families.get(model["family"])
            size = model.get("native_size") or spec.native_size
            footprint = estimate_footprint(model["kind"], Path(model["path"]), DTYPE_BYTES[dtype])
            activations = estimate_activation_bytes(
                spec.activation_shape or "dit", size, size, 1, DTYPE_BYTES[dtype],
                classifier_free_guidance=spec.guidance_knob != "distilled",
            )
            planned = plan_weights(facts, footprint, activations, dtype_bytes=DTYPE_BYTES[dtype],
                                   quantize=settings.quantize if report["setting_ok"] else "auto",
                                   memory=settings.memory, installed=installed_packages(), backend=backend)
            report["default_model_plan"] = {
                "quantization": planned.quantization.value, "quantization_reason": planned.quantization.reason,
                "memory_plan": planned.memory.value.value, "memory_reason": planned.memory.reason,
                "at_size": f"{size}x{size}",
            }
        except Exception as exc:  # doctor reports every problem instead of stopping at the first
            report["default_model_plan_error"] = f"{type(exc).__name__}: {exc}"
    return report


def problems(report: dict[str, Any], settings: Settings) -> list[str]:
    """What stops something from working as configured; each one makes doctor exit non-zero."""
    found: list[str] = []
    if "problem" in report["model"]:
        found.append(f"model: {report['model']['problem']}")
    if not report["quantization"]["setting_ok"]:
        found.append(f"quantize: {report['quantization']['setting_reason']}")
    if settings.backend != "auto":
        entry = report["backends"].get(settings.backend)
        if entry is not None and not entry["available"]:
            found.append(f"backend: IMGTOOLS_BACKEND={settings.backend} cannot run here: {entry['reason']}")
    vlm = report["vlm"]
    if vlm["key_set"] and not vlm["reachable"]:
        found.append(f"vlm: {vlm['base_url']} is not reachable ({vlm['detail']})")
    elif not vlm["key_set"] and "openrouter.ai" not in vlm["base_url"] and not vlm["reachable"]:
        found.append(f"vlm: {vlm['base_url']} is not reachable ({vlm['detail']})")
    return found


def doctor(settings: Settings, as_json: bool = False) -> int:
    """Print the report; exit status 1 when anything is a problem (so scripts and CI can rely on it), else 0."""
    report = collect(settings)
    status = 1 if report["problems"] else 0
    if as_json:
        print(json.dumps(report, indent=2, default=str))
        return status
    print(f"device:   {report['device']}")
    for device in report["devices"]:
        print(f"  - {device['kind']} {device['name']}: {device['total_memory_bytes'] / 2**30:.1f} GiB total, "
              f"{device['free_memory_bytes'] / 2**30:.1f} GiB free, bf16={device['supports_bf16']}")
    print(f"dtype:    {report['dtype']['value']} — {report['dtype']['reason']}")
    print(f"backend:  {report['backend']['value']} — {report['backend']['reason']} (installed: {', '.join(report['backends_installed'])})")
    for backend_id, entry in report["backends"].items():
        print(f"  - {backend_id}: {'available' if entry['available'] else 'not available: ' + entry['reason']}")
    quant = report["quantization"]
    print(f"quantize: {quant['setting']} — {quant['setting_reason']} (installed: {', '.join(quant['installed']) or 'none'})")
    for level, entry in quant["levels"].items():
        print(f"  - {level} rung: {entry['method'] or 'none'} — {entry['reason']}")
    if "int8_activations" in quant:
        int8 = quant["int8_activations"]
        print(f"  - int8 activations (nncf_w8a8, OpenVINO UNets): {'on' if int8['enabled'] else 'off'} — {int8['reason']}")
    if "default_model_plan" in quant:
        plan = quant["default_model_plan"]
        print(f"  - {report['model']['spec']}: quantization {plan['quantization'] or 'none'} — {plan['quantization_reason']}; "
              f"memory {plan['memory_plan']} — {plan['memory_reason']}")
    cache = report["step_cache"]
    print(f"speed:    step caches for {cache['denoiser'] or 'transformer'} models:")
    for speed, what in cache["speeds"].items():
        print(f"  - {speed}: {what}")
    print("torch:    what the torch backend compiles and fuses here:")
    for name, entry in report["fast_path"].items():
        print(f"  - {name}: {entry['value']} — {entry['reason']}")
    warmup = report["warmup"]
    print(f"warm-up:  {'at start' if warmup['enabled'] else 'off'} — {warmup['reason']}")
    print(f"cache:    {report['cache_dir']} (compiled backend models)")
    model = report["model"]
    if "problem" in model:
        print(f"model:    {model['spec']} — PROBLEM: {model['problem']}")
    elif "note" in model:
        print(f"model:    {model['spec']} — {model['note']}")
    else:
        print(f"model:    {model['spec']} ({model['kind']}, {model['family']}, native {model['native_size']}px, turbo={model['turbo']})")
    print(f"hub:      {'offline: ' + report['offline'] if report['offline'] else 'online (models not in the cache are downloaded on first use)'}")
    print(f"outputs:  {report['output_dir']}")
    vlm = report["vlm"]
    print(f"vlm:      {vlm['model']} at {vlm['base_url']} — key {'set' if vlm['key_set'] else 'not set'}; "
          f"{'reachable' if vlm['reachable'] else 'NOT reachable'} ({vlm['detail']})")
    if report["problems"]:
        print(f"{len(report['problems'])} problem(s):", file=sys.stderr)
        for problem in report["problems"]:
            print(f"  PROBLEM {problem}", file=sys.stderr)
    return status
