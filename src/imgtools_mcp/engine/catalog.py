"""Every model the engine could load (model folders, checkpoints, the HF cache) and every LoRA, found from files alone."""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from .families import FamilyInfo, family_from_folder, family_from_state_dict_keys
from .lora import LoraInfo, find_lora_files, lora_info
from .weights import HeaderError, SafetensorsHeader, disk_bytes, read_header

log = logging.getLogger(__name__)

CHECKPOINT_UNET_PREFIX = "model.diffusion_model."
# Folders deeper than this under a model folder are not searched (a model library is rarely nested deeper).
MAX_SCAN_DEPTH = 4


@dataclass
class FoundModel:
    """A loadable model as found on disk; `model` is what to pass as a tool's `model` parameter."""

    model: str
    name: str
    kind: Literal["folder", "file", "hub"]
    path: Path
    size_bytes: int
    family: FamilyInfo | None = None
    note: str | None = None


@dataclass
class FoundLora:
    name: str
    path: Path
    size_bytes: int
    info: LoraInfo


@dataclass
class Catalog:
    models: list[FoundModel] = field(default_factory=list)
    loras: list[FoundLora] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # files that are neither, with why


def _checkpoint_family(path: Path, header: SafetensorsHeader) -> FamilyInfo:
    in_key = CHECKPOINT_UNET_PREFIX + "input_blocks.0.0.weight"
    in_channels = header.tensors[in_key].shape[1] if in_key in header.tensors else 4
    return family_from_state_dict_keys(set(header.tensors), path.stem, unet_in_channels=in_channels)


def _is_checkpoint(header: SafetensorsHeader) -> bool:
    return any(name.startswith(CHECKPOINT_UNET_PREFIX) for name in header.tensors)


def _folder_model(model: str, kind: Literal["folder", "hub"], path: Path, name: str, size: int | None = None) -> FoundModel:
    found = FoundModel(model, name, kind, path, disk_bytes(path) if size is None else size)
    try:
        found.family = family_from_folder(path, name)
    except (OSError, ValueError, KeyError) as exc:
        # e.g. a transformer-based pipeline (no unet/config.json): listed, but not one this engine runs
        found.note = f"not a UNet pipeline of a known family ({type(exc).__name__}: {str(exc)[:120]})"
    return found


def scan_model_dirs(model_dirs: list[Path], catalog: Catalog) -> None:
    """Diffusers folders (with model_index.json) and single-file checkpoints under each model folder."""
    seen: set[Path] = set()
    for root in model_dirs:
        root = Path(root).expanduser()
        if not root.is_dir():
            catalog.skipped.append(f"{root}: not a folder (IMGTOOLS_MODEL_DIRS)")
            continue
        # Model libraries are often symlinks to other disks; the depth limit stops link loops.
        for folder, subfolders, files in os.walk(root, followlinks=True):
            here = Path(folder)
            depth = len(here.relative_to(root).parts)
            if (here / "model_index.json").is_file():
                subfolders[:] = []  # a pipeline's component folders are not models of their own
                resolved = here.resolve()
                if resolved not in seen:
                    seen.add(resolved)
                    # The name relative to the model folder is what `model` accepts; a model folder itself goes by path.
                    spec = here.relative_to(root).as_posix() if here != root else str(resolved)
                    catalog.models.append(_folder_model(spec, "folder", resolved, here.name))
                continue
            subfolders[:] = sorted(s for s in subfolders if not s.startswith(".")) if depth < MAX_SCAN_DEPTH else []
            for file_name in sorted(files):
                if not file_name.lower().endswith(".safetensors"):
                    continue
                path = here / file_name
                resolved = path.resolve()
                if resolved in seen:
                    continue
                seen.add(resolved)
                try:
                    header = read_header(path)
                except HeaderError as exc:
                    catalog.skipped.append(f"{path}: {exc}")
                    continue
                if _is_checkpoint(header):
                    model = FoundModel(path.relative_to(root).as_posix(), path.stem, "file", resolved, path.stat().st_size)
                    model.family = _checkpoint_family(path, header)
                    catalog.models.append(model)
                elif lora_info(header) is not None:
                    catalog.skipped.append(f"{path}: a LoRA, not a model; put it under IMGTOOLS_LORA_DIRS")
                else:
                    catalog.skipped.append(f"{path}: not a full checkpoint (no {CHECKPOINT_UNET_PREFIX}* tensors)")


def scan_hf_cache(cache_dir: Path, catalog: Catalog) -> None:
    """Pipelines in the HuggingFace hub cache: model repos whose snapshot has a model_index.json."""
    if not cache_dir.is_dir():
        return
    from huggingface_hub import scan_cache_dir
    from huggingface_hub.errors import CacheNotFound

    try:
        info = scan_cache_dir(cache_dir)
    except (CacheNotFound, OSError, ValueError) as exc:
        catalog.skipped.append(f"{cache_dir}: HuggingFace cache not readable ({exc})")
        return
    for repo in sorted(info.repos, key=lambda r: r.repo_id):
        if repo.repo_type != "model" or not repo.revisions:
            continue
        revisions = sorted(repo.revisions, key=lambda r: ("main" in r.refs, r.last_modified), reverse=True)
        revision = revisions[0]
        if not (revision.snapshot_path / "model_index.json").is_file():
            continue
        catalog.models.append(
            _folder_model(repo.repo_id, "hub", revision.snapshot_path, repo.repo_id.split("/")[-1], revision.size_on_disk)
        )


def scan_loras(lora_dirs: list[Path], catalog: Catalog) -> None:
    for name, path in find_lora_files(lora_dirs):
        try:
            info = lora_info(read_header(path))
        except HeaderError as exc:
            catalog.skipped.append(f"{path}: {exc}")
            continue
        if info is None:
            catalog.skipped.append(f"{path}: not a LoRA (no lora_A/lora_B or lora_down/lora_up tensors)")
            continue
        catalog.loras.append(FoundLora(name, path, path.stat().st_size, info))


def build_catalog(model_dirs: list[Path], lora_dirs: list[Path], hub_cache: Path) -> Catalog:
    catalog = Catalog()
    scan_model_dirs(model_dirs, catalog)
    scan_hf_cache(hub_cache, catalog)
    scan_loras(lora_dirs, catalog)
    return catalog


# ----- a config for single-file checkpoints -----


def _config_matches(folder: Path, header: SafetensorsHeader) -> bool:
    """Whether a diffusers folder's UNet has the checkpoint's shapes (input channels, widths, text width)."""
    try:
        unet = json.loads((folder / "unet" / "config.json").read_text())
    except (OSError, ValueError):
        return False
    if not all((folder / part).is_dir() for part in ("scheduler", "tokenizer")):
        return False
    conv_in = header.tensors.get(CHECKPOINT_UNET_PREFIX + "input_blocks.0.0.weight")
    if conv_in is None or len(conv_in.shape) < 2:
        return False
    widths = unet.get("block_out_channels") or [320]
    if conv_in.shape[0] != widths[0] or conv_in.shape[1] != unet.get("in_channels", 4):
        return False
    cross = unet.get("cross_attention_dim")
    cross_dims = set(cross) if isinstance(cross, list) else {cross}
    to_k = next((t for n, t in header.tensors.items() if n.startswith(CHECKPOINT_UNET_PREFIX) and n.endswith("attn2.to_k.weight")), None)
    return to_k is None or (len(to_k.shape) == 2 and to_k.shape[1] in cross_dims)


def find_config_folder(checkpoint: Path, family: FamilyInfo, model_dirs: list[Path], hub_cache: Path) -> Path | None:
    """A local diffusers folder of the checkpoint's family and shapes (model folders first, then the HF cache).

    A transformer file (GGUF or .safetensors of a DiT family) takes the first folder of its family: its shapes are
    checked when diffusers loads it.
    """
    by_shapes = checkpoint.suffix.lower() != ".gguf" and family.family.denoiser == "unet"
    header = read_header(checkpoint) if by_shapes else None
    catalog = Catalog()
    scan_model_dirs(model_dirs, catalog)
    scan_hf_cache(hub_cache, catalog)
    for found in catalog.models:
        if found.kind == "file" or found.family is None:
            continue
        if found.family.family is not family.family or found.family.inpainting != family.inpainting:
            continue
        if header is None or _config_matches(found.path, header):
            return found.path
    return None


def default_config_repo(checkpoint: Path) -> str | None:
    """The hub repo diffusers would fetch configs from for this checkpoint (read from tensor shapes only)."""
    import torch
    from diffusers.loaders.single_file_utils import fetch_diffusers_config

    try:
        header = read_header(checkpoint)
        # Meta tensors carry the shapes diffusers inspects without any data.
        shapes = {name: torch.empty(t.shape, device="meta") for name, t in header.tensors.items()}
        return fetch_diffusers_config(shapes)["pretrained_model_name_or_path"]
    except (HeaderError, KeyError, ValueError, RuntimeError) as exc:
        log.debug("no default config repo for %s: %s", checkpoint, exc)
        return None
