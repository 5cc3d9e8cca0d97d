"""IP-Adapter for SD 1.x and SDXL: reference images steer style or subject, with the adapter loaded for the call only.

A run passes `EngineRequest.extra["ip_adapter"]` as a list of (image, weight); the engine checks it with
`check_ip_adapter` and wraps the pipeline call in `loaded_for_call`. Adapters are found like LoRAs: a folder
laid out as the hub repo (h94/IP-Adapter) in IMGTOOLS_LORA_DIRS, the HuggingFace cache, or the hub.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
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


DEFAULT_IP_ADAPTERS: dict[str, AdapterLayout] = {
    "sd1": AdapterLayout("h94/IP-Adapter", "models", "ip-adapter_sd15.safetensors"),
    "sdxl": AdapterLayout("h94/IP-Adapter", "sdxl_models", "ip-adapter_sdxl.safetensors"),
}


@dataclass(frozen=True)
class AdapterSource:
    location: str  # a local folder laid out like the repo, or the repo id (diffusers fetches it)
    layout: AdapterLayout

    @property
    def name(self) -> str:
        return Path(self.layout.weight_name).stem


def _has_layout(folder: Path, layout: AdapterLayout) -> bool:
    return (folder / layout.subfolder / layout.weight_name).is_file() and (
        folder / layout.subfolder / layout.image_encoder_folder
    ).is_dir()


def resolve_ip_adapter(family: "FamilyInfo", *, dirs: list[Path], offline: bool) -> AdapterSource:
    family_id = family.family.id
    layout = DEFAULT_IP_ADAPTERS.get(family_id)
    if layout is None:
        raise InvalidRequestError(
            "reference_images",
            f"{family.family.label} models take no reference images here (IP-Adapter is wired for SD 1.x and SDXL; "
            "instruction-edit families take them natively)",
        )
    repo_name = layout.repo.rsplit("/", 1)[-1]
    for folder in dirs:
        candidate = Path(folder).expanduser() / repo_name
        if _has_layout(candidate, layout):
            return AdapterSource(str(candidate.resolve()), layout)
    from .loader import _hub_cache_snapshot

    cached = _hub_cache_snapshot(layout.repo)
    if cached is not None and _has_layout(cached, layout):
        return AdapterSource(str(cached), layout)
    if offline:
        raise InvalidRequestError(
            "reference_images",
            f"the IP-Adapter {layout.repo}/{layout.subfolder}/{layout.weight_name} is not in IMGTOOLS_LORA_DIRS or the "
            f"HuggingFace cache and offline mode is on; run `hf download {layout.repo} --include '{layout.subfolder}/*'` "
            "where the hub is reachable",
        )
    return AdapterSource(layout.repo, layout)


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
