"""What weights files hold (tensor names, shapes, dtypes, bytes), read from their headers without loading tensors."""

from __future__ import annotations

import hashlib
import json
import os
import struct
from dataclasses import dataclass
from pathlib import Path

from .memory import ModelFootprint

# Bytes per element of each safetensors dtype tag.
_DTYPE_BYTES = {
    "F64": 8, "F32": 4, "F16": 2, "BF16": 2, "F8_E4M3": 1, "F8_E5M2": 1,
    "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1,
}  # fmt: skip
_FLOAT_TAGS = {"F64", "F32", "F16", "BF16"}
# A header larger than this is not a safetensors header (the format caps it at 100 MB).
_MAX_HEADER_BYTES = 100 * 1024 * 1024


class HeaderError(ValueError):
    """The file is not a readable safetensors file."""


@dataclass(frozen=True)
class TensorInfo:
    dtype: str
    shape: tuple[int, ...]

    @property
    def numel(self) -> int:
        count = 1
        for size in self.shape:
            count *= size
        return count

    def nbytes(self, float_itemsize: int | None = None) -> int:
        """Bytes on disk, or once loaded with floats cast to `float_itemsize` bytes (as torch_dtype does)."""
        if float_itemsize is not None and self.dtype in _FLOAT_TAGS:
            return self.numel * float_itemsize
        return self.numel * _DTYPE_BYTES.get(self.dtype, 4)


@dataclass(frozen=True)
class SafetensorsHeader:
    tensors: dict[str, TensorInfo]
    metadata: dict[str, str]
    header_bytes: int  # the 8-byte length plus the JSON header; tensor data starts after it

    def nbytes(self, float_itemsize: int | None = None, prefix: str = "") -> int:
        return sum(t.nbytes(float_itemsize) for name, t in self.tensors.items() if name.startswith(prefix))


def read_header(path: Path) -> SafetensorsHeader:
    """The tensor table of a .safetensors file: a few KB read, however large the file."""
    try:
        with open(path, "rb") as handle:
            prefix = handle.read(8)
            if len(prefix) != 8:
                raise HeaderError(f"{path.name}: too short to be a safetensors file")
            (length,) = struct.unpack("<Q", prefix)
            file_bytes = os.fstat(handle.fileno()).st_size
            if length > _MAX_HEADER_BYTES or 8 + length > file_bytes:
                raise HeaderError(f"{path.name}: not a safetensors file (header length {length})")
            raw = json.loads(handle.read(length))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise HeaderError(f"{path.name}: not a readable safetensors file ({type(exc).__name__})") from exc
    if not isinstance(raw, dict):
        raise HeaderError(f"{path.name}: not a safetensors file")
    metadata = raw.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict):
        raise HeaderError(f"{path.name}: not a safetensors file (__metadata__ is not an object)")
    data_bytes = file_bytes - 8 - length
    tensors = {}
    for name, entry in raw.items():
        tensors[name] = _tensor_entry(path, name, entry, data_bytes)
    return SafetensorsHeader(tensors, {str(k): str(v) for k, v in metadata.items()}, 8 + length)


def _tensor_entry(path: Path, name: str, entry: object, data_bytes: int) -> TensorInfo:
    """One tensor of the header, checked as the format defines it: whole non-negative dimensions, and offsets
    inside the file that hold exactly the tensor's bytes (so no absurd shape reaches the memory planner)."""
    problem = f"{path.name}: not a safetensors file (tensor {name[:80]!r} is malformed)"
    if not isinstance(entry, dict):
        raise HeaderError(problem)
    shape, offsets, dtype = entry.get("shape"), entry.get("data_offsets"), entry.get("dtype")
    if not isinstance(dtype, str) or not isinstance(shape, list) or not isinstance(offsets, list) or len(offsets) != 2:
        raise HeaderError(problem)
    if not all(isinstance(size, int) and not isinstance(size, bool) and size >= 0 for size in (*shape, *offsets)):
        raise HeaderError(problem)
    start, end = offsets
    info = TensorInfo(dtype, tuple(shape))
    if not start <= end <= data_bytes or (dtype in _DTYPE_BYTES and end - start != info.nbytes()):
        raise HeaderError(problem)
    return info


def tensor_data_sha256(path: Path) -> str:
    """SHA-256 of the tensor data after the header: the hash A1111/SD.Next show as a LoRA's hash (`addnet` hash)."""
    header_bytes = read_header(path).header_bytes
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        handle.seek(header_bytes)
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def disk_bytes(path: Path) -> int:
    """Size on disk of a file or a folder (following the symlinks the HF cache uses)."""
    if path.is_file():
        return path.stat().st_size
    total = 0
    for item in path.rglob("*"):
        try:
            if item.is_file():
                total += item.stat().st_size
        except OSError:
            continue  # a broken link in a half-downloaded cache: it takes no space worth counting
    return total


# ----- what a model will occupy once loaded -----

# Original (A1111/LDM) single-file checkpoints: which component each key prefix belongs to.
_CHECKPOINT_PREFIXES = {
    "model.diffusion_model.": "denoiser",
    "first_stage_model.": "vae",
    "cond_stage_model.": "text_encoder",
    "conditioner.embedders.0.": "text_encoder",
    "conditioner.embedders.1.": "text_encoder_2",
}


def _component_weight_files(folder: Path) -> list[Path]:
    """The weights files diffusers loads for a component: the plain (sharded or not) safetensors before any variant."""
    found = sorted(folder.glob("*.safetensors"))
    plain = [p for p in found if p.name.count(".") == 1]
    if plain or not found:
        return plain
    variant = found[0].name.split(".")[1].split("-")[0]
    return [p for p in found if p.name.split(".")[1].split("-")[0] == variant]


def estimate_footprint(kind: str, path: Path, float_itemsize: int) -> ModelFootprint:
    """Bytes per component once loaded in a dtype of `float_itemsize` bytes, from file headers only.

    Folders sum each component's safetensors header (sharded files included); `.bin` weights count
    their file size. Single files split their keys by the original checkpoint prefixes.
    """
    sizes: dict[str, int] = {}
    if kind == "file":
        header = read_header(path)
        for name, tensor in header.tensors.items():
            component = next((c for p, c in _CHECKPOINT_PREFIXES.items() if name.startswith(p)), "other")
            sizes[component] = sizes.get(component, 0) + tensor.nbytes(float_itemsize)
    else:
        for component in sorted(p for p in path.iterdir() if p.is_dir()):
            files = _component_weight_files(component)
            total = 0
            for file in files:
                try:
                    total += read_header(file).nbytes(float_itemsize)
                except HeaderError:
                    total += file.stat().st_size
            if not files:
                total = sum(p.stat().st_size for p in component.glob("*.bin"))
            if total:
                name = component.name
                key = "denoiser" if name in ("unet", "transformer") or "controlnet" in name else name
                sizes[key] = sizes.get(key, 0) + total
    text_encoders = tuple(size for name, size in sorted(sizes.items()) if name.startswith("text_encoder"))
    other = sum(size for name, size in sizes.items() if name not in ("denoiser", "vae") and not name.startswith("text_encoder"))
    return ModelFootprint(
        denoiser_bytes=sizes.get("denoiser", 0),
        text_encoder_bytes=text_encoders,
        vae_bytes=sizes.get("vae", 0),
        other_bytes=other,
    )
