"""IP-Adapter for SD 1.x, SDXL and FLUX.1: reference images steer style or subject, the adapter loaded for the call only.

A run passes `EngineRequest.extra["ip_adapter"]` as a list of (image, weight); the engine checks it with
`check_ip_adapter` and wraps the pipeline call in `loaded_for_call`. Adapters are found like LoRAs: a folder
laid out as the hub repo (h94/IP-Adapter, XLabs-AI/flux-ip-adapter) in IMGTOOLS_LORA_DIRS, the HuggingFace cache,
or the hub. FLUX.1's adapter (XLabs; the one layout diffusers' FluxIPAdapterMixin loads) reads CLIP ViT-L/14
image embeddings from a separate repo, found the same way.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import InvalidRequestError

if TYPE_CHECKING:
    from .families import FamilyInfo

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AdapterLayout:
    """Where an IP-Adapter's weights and its CLIP image encoder sit in the hub repo (or a local copy of it)."""

    repo: str
    subfolder: str
    weight_name: str
    image_encoder_folder: str = "image_encoder"
    image_encoder_repo: str | None = None  # the encoder is a repo of its own (FLUX.1), not a folder of the adapter's


DEFAULT_IP_ADAPTERS: dict[str, AdapterLayout] = {
    "sd1": AdapterLayout("h94/IP-Adapter", "models", "ip-adapter_sd15.safetensors"),
    "sdxl": AdapterLayout("h94/IP-Adapter", "sdxl_models", "ip-adapter_sdxl.safetensors"),
    "flux": AdapterLayout(
        "XLabs-AI/flux-ip-adapter", "", "ip_adapter.safetensors", image_encoder_repo="openai/clip-vit-large-patch14"
    ),
}


@dataclass(frozen=True)
class AdapterSource:
    location: str  # a local folder laid out like the repo, or the repo id (diffusers fetches it)
    layout: AdapterLayout
    image_encoder: str | None = None  # FLUX.1: the encoder's folder or repo id

    @property
    def name(self) -> str:
        return Path(self.layout.weight_name).stem


def _has_layout(folder: Path, layout: AdapterLayout) -> bool:
    if layout.image_encoder_repo is not None:
        return (folder / layout.subfolder / layout.weight_name).is_file()
    return (folder / layout.subfolder / layout.weight_name).is_file() and (
        folder / layout.subfolder / layout.image_encoder_folder
    ).is_dir()


def _find_repo(repo: str, dirs: list[Path], found: Callable[[Path], bool]) -> Path | None:
    """`<dir>/<repo name>` in the LoRA folders, else the HuggingFace cache's snapshot, when `found` accepts it."""
    from .loader import _hub_cache_snapshot

    name = repo.rsplit("/", 1)[-1]
    for folder in dirs:
        candidate = Path(folder).expanduser() / name
        if found(candidate):
            return candidate.resolve()
    cached = _hub_cache_snapshot(repo)
    return cached if cached is not None and found(cached) else None


def _missing(what: str, repo: str, include: str | None) -> InvalidRequestError:
    fetch = f"hf download {repo}" + (f" --include '{include}'" if include else "")
    return InvalidRequestError(
        "reference_images",
        f"the IP-Adapter {what} is not in IMGTOOLS_LORA_DIRS or the HuggingFace cache and offline mode is on; "
        f"run `{fetch}` where the hub is reachable",
    )


def resolve_ip_adapter(family: "FamilyInfo", *, dirs: list[Path], offline: bool) -> AdapterSource:
    family_id = family.family.id
    layout = DEFAULT_IP_ADAPTERS.get(family_id)
    if layout is None:
        raise InvalidRequestError(
            "reference_images",
            f"{family.family.label} models take no reference images through IP-Adapter here "
            "(IP-Adapter is wired for SD 1.x, SDXL and FLUX.1)",
        )
    where = _find_repo(layout.repo, dirs, lambda folder: _has_layout(folder, layout))
    if where is None and offline:
        name = "/".join(part for part in (layout.repo, layout.subfolder, layout.weight_name) if part)
        raise _missing(name, layout.repo, f"{layout.subfolder}/*" if layout.subfolder else None)
    encoder = None
    if layout.image_encoder_repo is not None:
        found = _find_repo(layout.image_encoder_repo, dirs, lambda folder: (folder / "config.json").is_file())
        if found is None and offline:
            raise _missing(f"image encoder {layout.image_encoder_repo}", layout.image_encoder_repo, None)
        encoder = str(found) if found is not None else layout.image_encoder_repo
    return AdapterSource(str(where) if where is not None else layout.repo, layout, encoder)


def check_ip_adapter(references: Any, family: "FamilyInfo", *, dirs: list[Path], offline: bool) -> AdapterSource:
    if not isinstance(references, list) or not references:
        raise InvalidRequestError("reference_images", "must be a non-empty list of (image, weight)")
    for index, (_, weight) in enumerate(references):
        if not 0 <= weight <= 2:
            raise InvalidRequestError(f"reference_images[{index}].weight", f"must be within 0-2 (got {weight:g})")
    return resolve_ip_adapter(family, dirs=dirs, offline=offline)


@contextmanager
def loaded_for_call(pipe: Any, references: list[tuple[Any, float]], source: AdapterSource) -> Iterator[dict[str, Any]]:
    """The adapter loaded into `pipe` (its UNet's attention and an image encoder) for one call, then removed again,
    so requests without reference images run exactly as before. Yields the call's extra keyword arguments.

    One adapter takes every reference image; it has one scale, so the weights' mean is used.
    """
    layout = source.layout
    if source.image_encoder is not None:  # FLUX.1 (FluxIPAdapterMixin): the encoder from its own repo, in the model's dtype
        pipe.load_ip_adapter(
            source.location, weight_name=layout.weight_name, subfolder=layout.subfolder,
            image_encoder_pretrained_model_name_or_path=source.image_encoder, image_encoder_dtype=pipe.transformer.dtype,
        )
    else:
        pipe.load_ip_adapter(
            source.location, subfolder=layout.subfolder, weight_name=layout.weight_name,
            image_encoder_folder=layout.image_encoder_folder,
        )
    try:
        pipe.set_ip_adapter_scale(sum(weight for _, weight in references) / len(references))
        images = [image.convert("RGB") for image, _ in references]
        yield {"ip_adapter_image": images[0] if len(images) == 1 else [images]}
    finally:
        pipe.unload_ip_adapter()
