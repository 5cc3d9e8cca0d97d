"""`engine_status`: the engine's device, dtype, backend and memory choices, loaded models, queue and VLM set-up."""

from __future__ import annotations

from typing import Any

import anyio
from mcp.server.mcpserver import Context, MCPServer
from mcp_types import CallToolResult, TextContent, ToolAnnotations
from pydantic import BaseModel, ConfigDict, Field

from ..app import AppContext
from .models import READ_ONLY, mib
from .present import app_of, bind_tool


class EngineStatusRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")


class LoadedModelStatus(BaseModel):
    model: str
    name: str
    family: str
    device: str
    dtype: str
    memory_plan: str
    memory_plan_reason: str
    backend: str = Field("torch", description="The backend chosen for this model; a request it cannot serve runs on torch")
    backend_reason: str = ""
    weights_bytes: int
    adapter_bytes: int = 0
    memory_bytes: int = Field(
        description="Weights, LoRA adapters and compiled backend graphs: what counts against the cache budget"
    )
    load_seconds: float
    idle_s: float
    loras_loaded: list[str] = Field(default_factory=list)
    loras_active: list[dict[str, Any]] = Field(default_factory=list)
    quantization: dict[str, Any] | None = Field(
        None, description="Quantized weights: method, reason, components, bytes before/after (absent: as loaded)"
    )


class EvictionStatus(BaseModel):
    model: str
    weights_bytes: int
    released: bool = Field(description="All its modules were garbage-collected (checked by weak reference)")
    device_bytes_freed: int | None = Field(None, description="Drop in device memory in use (accelerators)")
    rss_bytes_freed: int = Field(description="Drop in process resident memory (noisy)")
    seconds: float
    reason: str


class CacheStatus(BaseModel):
    budget_bytes: int | None
    budget_reason: str
    used_bytes: int
    evictions: list[EvictionStatus] = Field(default_factory=list, description="Most recent last")


class PlannedMemory(BaseModel):
    model: str
    memory_plan: str
    reason: str
    estimated_weights_bytes: int
    at_size: str


class VlmStatus(BaseModel):
    base_url: str
    model: str
    api_key_set: bool = Field(description="Whether a key is configured; the key itself is never shown")


class EngineStatus(BaseModel):
    device: str
    device_name: str
    dtype: str
    dtype_reason: str
    backend: str
    backend_reason: str | None = None
    backends: dict[str, Any] = Field(
        default_factory=dict, description="Every backend: whether it can run on this device, and why not"
    )
    device_total_bytes: int
    device_free_bytes: int
    memory_setting: str = Field(description="IMGTOOLS_MEMORY: auto or a fixed plan")
    default_model_plan: PlannedMemory | None = Field(
        None, description="With nothing loaded: the plan the default model would get, estimated from its files"
    )
    cache: CacheStatus
    loaded_models: list[LoadedModelStatus] = Field(default_factory=list)
    queue_length: int
    max_queue: int
    running: str | None = Field(None, description="The job on the device now (mode:model)")
    running_s: float | None = None
    background_jobs_active: int = 0
    replicas: list[dict[str, Any]] = Field(
        default_factory=list,
        description="IMGTOOLS_ENGINE=ray: each Ray Serve replica's id, device, models held and loaded, running and waiting",
    )
    default_model: str | None = Field(None, description="The default model (IMGTOOLS_MODEL; auto: picked for this device)")
    default_model_reason: str | None = Field(None, description="Why that model: IMGTOOLS_MODEL, or what auto saw")
    warmup: dict[str, Any] | None = Field(
        None,
        description="IMGTOOLS_WARMUP: whether the default model is loaded and run once at start, why, and its state; "
        "`later`: models loaded by requests afterwards, whose native size ran once in the background",
    )
    vlm: VlmStatus


def build_status(app: AppContext) -> EngineStatus:
    settings = app.settings
    # The engine's status dataclass has engine_status's shape; the server adds its background jobs and the VLM.
    return EngineStatus(
        **app.engine.status().as_dict(),
        background_jobs_active=app.tasks.active_count(),
        vlm=VlmStatus(
            base_url=settings.vlm_base_url, model=settings.vlm_model, api_key_set=settings.vlm_api_key is not None
        ),
    )


def status_text(status: EngineStatus) -> str:
    cache = status.cache
    budget = mib(cache.budget_bytes) if cache.budget_bytes is not None else "unlimited"
    lines = [
        f"{status.device} ({status.device_name}), {status.dtype}, {status.backend}; "
        f"{mib(status.device_free_bytes)} free of {mib(status.device_total_bytes)}",
        f"model cache: {mib(cache.used_bytes)} of {budget} in use, {len(status.loaded_models)} loaded, "
        f"{len(cache.evictions)} eviction(s)",
    ]
    for model in status.loaded_models:
        loras = ", ".join(f"{l['name']}:{l['weight']:g}" for l in model.loras_active)
        lines.append(
            f"- {model.name} on {model.device} ({model.backend}): {model.memory_plan} ({model.memory_plan_reason}); "
            f"{mib(model.memory_bytes)}"
            + (f"; LoRAs active {loras}" if loras else "")
        )
    if status.default_model_plan is not None:
        plan = status.default_model_plan
        lines.append(f"default model would run {plan.memory_plan}: {plan.reason}")
    warmup = status.warmup or {}
    if warmup.get("enabled"):
        lines.append(f"warm-up {warmup['state']}: {warmup.get('detail') or warmup['reason']}")
        for later in warmup.get("later", []):
            lines.append(f"warm-up after load {later['state']}: {later.get('detail') or later['reason']}")
    running = f"running {status.running} for {status.running_s:g} s" if status.running else "idle"
    lines.append(f"{running}; {status.queue_length} waiting (max {status.max_queue}); {status.background_jobs_active} background job(s)")
    for replica in status.replicas:  # IMGTOOLS_ENGINE=ray
        lines.append(
            f"- replica {replica['replica']} ({replica['state']}) on {replica['device']} at {replica['node_ip']}: "
            f"models {', '.join(replica['models']) or 'none'}; {replica['running'] or 'idle'}, {replica['waiting']} waiting"
        )
    lines.append(f"VLM: {status.vlm.model} at {status.vlm.base_url}, key {'set' if status.vlm.api_key_set else 'NOT set'}")
    return "\n".join(lines)


async def engine_status(request: EngineStatusRequest, ctx: Context) -> CallToolResult:
    app = app_of(ctx)
    status = await anyio.to_thread.run_sync(build_status, app)
    return CallToolResult(
        content=[TextContent(type="text", text=status_text(status))],
        structured_content=status.model_dump(mode="json"),
    )


def register(server: MCPServer) -> None:
    bind_tool(
        server,
        EngineStatusRequest,
        engine_status,
        name="engine_status",
        title="Engine status",
        description="Device, dtype, backend and memory plan (with reasons), loaded models against the cache budget, "
        "evictions, queue, running job and VLM setup.",
        annotations=ToolAnnotations(title="Engine status", **READ_ONLY),
        output_model=EngineStatus,
    )
