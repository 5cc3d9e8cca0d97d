"""`list_models`: what the engine can load (models and LoRAs, with family and size), without changing anything."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import anyio
from mcp.server.mcpserver import Context, MCPServer
from mcp_types import CallToolResult, TextContent, ToolAnnotations
from pydantic import BaseModel, ConfigDict, Field

from ..app import AppContext
from ..engine.catalog import FoundModel, build_catalog
from ..engine.errors import EngineError
from ..engine.loader import hf_cache_dir, inspect_family, resolve_model
from .present import app_of, bind_tool

READ_ONLY = dict(read_only_hint=True, destructive_hint=False, idempotent_hint=True, open_world_hint=False)
FamilyName = Literal["sd1", "sd2", "sdxl"]


class ListModelsRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    family: FamilyName | None = Field(None, description="Only this family's models and LoRAs")


class ModelEntry(BaseModel):
    model: str = Field(description="Pass this as `model` to generate/edit/inpaint")
    name: str
    kind: Literal["folder", "file", "hub"] = Field(description="diffusers folder, single-file checkpoint, or HF cache")
    path: str | None = None
    family: FamilyName | None = Field(None, description="sd1 | sd2 | sdxl, read from configs or tensor names")
    turbo: bool | None = Field(None, description="Few-step distilled (turbo/lightning/LCM): 1-4 steps, guidance 0")
    inpainting: bool | None = Field(None, description="A dedicated inpainting checkpoint (use with inpaint/edit)")
    native_size: int | None = Field(None, description="Default width and height")
    size_bytes: int = Field(0, description="Size on disk")
    default: bool = Field(False, description="The server's configured default model (IMGTOOLS_MODEL)")
    available: bool = Field(True, description="False when the default is a hub id not downloaded yet")
    loaded: bool = False
    device: str | None = Field(None, description="Where it is loaded, when it is")
    memory_plan: str | None = None
    note: str | None = None


class LoraEntry(BaseModel):
    name: str = Field(description="Pass this as `name` in `loras`")
    path: str
    size_bytes: int
    family: FamilyName | None = Field(None, description="The family it was trained for, when its shapes tell")
    rank: int | None = None
    components: list[str] = Field(default_factory=list, description="Parts it changes: unet, text_encoder, text_encoder_2")
    loaded_in: list[str] = Field(default_factory=list, description="Models it is loaded into as an adapter")


class ModelListing(BaseModel):
    default: str = Field(description="The configured default model")
    models: list[ModelEntry] = Field(default_factory=list)
    loras: list[LoraEntry] = Field(default_factory=list)
    searched: dict[str, list[str]] = Field(default_factory=dict, description="Folders looked in")
    skipped: list[str] = Field(default_factory=list, description="Files found that are not loadable, and why")


# ----- list_models -----


def mib(size: int) -> str:
    return f"{size / 2**20:,.0f} MiB" if size < 2**30 else f"{size / 2**30:.1f} GiB"


def _entry(found: FoundModel) -> ModelEntry:
    family = found.family
    return ModelEntry(
        model=found.model,
        name=found.name,
        kind=found.kind,
        path=str(found.path),
        family=family.family.value if family else None,
        turbo=family.turbo if family else None,
        inpainting=family.inpainting if family else None,
        native_size=family.native_size if family else None,
        size_bytes=found.size_bytes,
        note=found.note,
    )


def _default_entry(app: AppContext, spec: str) -> tuple[Path | None, ModelEntry | None]:
    """The default model's path if it is local; otherwise an entry saying it is not downloaded yet."""
    try:
        source = resolve_model(spec, model_dirs=app.settings.model_dirs, offline=True)
    except EngineError:
        how = "offline mode is on: download it where the hub is reachable" if app.engine.offline else "the first use downloads it"
        return None, ModelEntry(model=spec, name=spec.split("/")[-1], kind="hub", default=True, available=False,
                                note=f"not in the HuggingFace cache; {how}")
    assert source.path is not None
    path = source.path.resolve()
    family = None
    try:
        family = inspect_family(source)
    except (OSError, ValueError, KeyError):
        pass
    entry = ModelEntry(
        model=spec, name=source.name, kind=source.kind, path=str(path), default=True,
        family=family.family.value if family else None, turbo=family.turbo if family else None,
        inpainting=family.inpainting if family else None, native_size=family.native_size if family else None,
    )
    from ..engine.weights import disk_bytes

    entry.size_bytes = disk_bytes(path)
    return path, entry


def build_listing(app: AppContext, family: str | None) -> ModelListing:
    settings = app.settings
    hub_cache = hf_cache_dir()
    catalog = build_catalog(settings.model_dirs, settings.lora_dirs, hub_cache)
    entries = [_entry(found) for found in catalog.models]
    # IMGTOOLS_MODEL=auto: the model the engine picked for this device.
    chosen = getattr(app.engine, "default_model", None)
    default_spec = chosen.value if chosen is not None else settings.model
    default_path, default_entry = _default_entry(app, default_spec)
    match = next((e for e in entries if default_path is not None and e.path and Path(e.path) == default_path), None)
    if match is not None:
        match.default = True
    elif default_entry is not None:
        entries.insert(0, default_entry)
    loaded = {Path(m.source.path).resolve(): m for m in app.engine.cache.loaded() if m.source.path is not None}
    for entry in entries:
        model = loaded.get(Path(entry.path).resolve()) if entry.path else None
        if model is not None:
            entry.loaded, entry.device, entry.memory_plan = True, model.device, model.plan
    lora_homes: dict[Path, list[str]] = {}
    for model in app.engine.cache.loaded():
        for adapter in model.adapters.loaded if model.adapters else []:
            if adapter.source.path is not None:
                lora_homes.setdefault(adapter.source.path.resolve(), []).append(model.source.name)
    loras = [
        LoraEntry(
            name=found.name,
            path=str(found.path),
            size_bytes=found.size_bytes,
            family=found.info.family.value if found.info.family else None,
            rank=found.info.rank,
            components=list(found.info.components),
            loaded_in=lora_homes.get(found.path.resolve(), []),
        )
        for found in catalog.loras
    ]
    if family is not None:
        entries = [e for e in entries if e.family == family]
        loras = [l for l in loras if l.family in (family, None)]
    return ModelListing(
        default=default_spec,
        models=entries,
        loras=loras,
        searched={
            "model_dirs": [str(p) for p in settings.model_dirs],
            "lora_dirs": [str(p) for p in settings.lora_dirs],
            "hf_cache": [str(hub_cache)],
        },
        skipped=catalog.skipped,
    )


def listing_text(listing: ModelListing) -> str:
    lines = [f"{len(listing.models)} model(s), {len(listing.loras)} LoRA(s); default: {listing.default}"]
    for entry in listing.models:
        marks = [m for m, on in (("default", entry.default), (f"loaded on {entry.device}", entry.loaded)) if on]
        if not entry.available:
            marks.append("not downloaded")
        family = entry.family or "unknown family"
        lines.append(
            f"- {entry.model} [{entry.kind}, {family}{', turbo' if entry.turbo else ''}"
            f"{', inpainting' if entry.inpainting else ''}, {mib(entry.size_bytes)}]"
            + (f" ({', '.join(marks)})" if marks else "")
        )
    for lora in listing.loras:
        lines.append(
            f"- LoRA {lora.name} [{lora.family or 'family unknown'}, rank {lora.rank}, {mib(lora.size_bytes)}]"
            + (f" (loaded in {', '.join(lora.loaded_in)})" if lora.loaded_in else "")
        )
    return "\n".join(lines)


async def list_models(request: ListModelsRequest, ctx: Context) -> CallToolResult:
    app = app_of(ctx)
    listing = await anyio.to_thread.run_sync(build_listing, app, request.family)
    return CallToolResult(
        content=[TextContent(type="text", text=listing_text(listing))],
        structured_content=listing.model_dump(mode="json"),
    )


def register(server: MCPServer) -> None:
    bind_tool(
        server,
        ListModelsRequest,
        list_models,
        name="list_models",
        title="List models",
        description="Loadable models (default, IMGTOOLS_MODEL_DIRS, HF cache) with family, size and load state, and "
        "LoRAs (IMGTOOLS_LORA_DIRS). Pass a `model` to generate/edit/inpaint, a LoRA's `name` in `loras`.",
        annotations=ToolAnnotations(title="List models", **READ_ONLY),
        output_model=ModelListing,
    )
