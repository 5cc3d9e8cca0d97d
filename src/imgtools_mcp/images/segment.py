"""Silhouettes inside the VLM's boxes: a SAM segmenter (transformers) cuts each object out of its box for mask_prompt.

`IMGTOOLS_SEGMENTER` picks it: `auto` uses facebook/sam-vit-base only where its weights are already on disk
(the hub cache or IMGTOOLS_MODEL_DIRS), so a first mask_prompt never starts a 375 MB download; `none` keeps
the boxes; a hub id or a folder is that SAM model, downloaded when it is a hub id not yet cached.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

if TYPE_CHECKING:
    from ..config import Settings

log = logging.getLogger(__name__)

AUTO = "auto"
NONE = "none"
DEFAULT_SEGMENTER = "facebook/sam-vit-base"
# A silhouette is grown by this share of its box's longer side (2 px at least) and clipped to the box grown as
# much: SAM cuts just inside an object's edge, and a repaint that leaves the old edge keeps a halo of it.
SILHOUETTE_MARGIN = 0.03

Box = tuple[int, int, int, int]  # left, top, right, bottom (exclusive), pixels


class SegmenterError(ValueError):
    """A segmenter that cannot be loaded; the message starts with mask_prompt and says what to set or download."""


def margin_for(box: Box) -> int:
    """How far a silhouette may reach past its box, in pixels."""
    return max(2, round(SILHOUETTE_MARGIN * max(box[2] - box[0], box[3] - box[1])))


def grown_box(box: Box, size: tuple[int, int]) -> Box:
    """The box grown by its margin, clipped to the image of `size` (width, height)."""
    grow = margin_for(box)
    return (max(0, box[0] - grow), max(0, box[1] - grow), min(size[0], box[2] + grow), min(size[1], box[3] + grow))


def _looks_like_path(spec: str) -> bool:
    # A hub id is `owner/name`; anything absolute, relative by dots or home, or deeper is meant as a folder.
    return Path(spec).is_absolute() or spec.startswith((".", "~")) or spec.count("/") > 1 or "\\" in spec


def _has_weights(folder: Path) -> bool:
    return (folder / "config.json").is_file() and (any(folder.glob("*.safetensors")) or (folder / "pytorch_model.bin").is_file())


def local_copy(repo_id: str, model_dirs: Sequence[Path]) -> Path | None:
    """A folder holding `repo_id`'s weights already on disk (IMGTOOLS_MODEL_DIRS first, then the hub cache), or None."""
    from ..engine.loader import hf_cache_dir

    for root in model_dirs:
        for candidate in (Path(root).expanduser() / repo_id, Path(root).expanduser() / repo_id.split("/")[-1]):
            if candidate.is_dir() and _has_weights(candidate):
                return candidate
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        snapshot = Path(snapshot_download(repo_id, local_files_only=True, cache_dir=hf_cache_dir()))
    except (LocalEntryNotFoundError, FileNotFoundError, OSError, ValueError):
        return None
    return snapshot if _has_weights(snapshot) else None


def dilate(mask: np.ndarray, radius: int) -> np.ndarray:
    """A boolean mask grown by `radius` pixels (a square structuring element)."""
    if radius <= 0:
        return mask.copy()
    import torch

    tensor = torch.from_numpy(mask.astype(np.float32))[None, None]
    grown = torch.nn.functional.max_pool2d(tensor, kernel_size=2 * radius + 1, stride=1, padding=radius)
    return grown[0, 0].numpy() > 0.5


@dataclass
class Silhouettes:
    """The mask the segmenter cut (white = repaint), which model cut it, and how many boxes it left as boxes."""

    mask: Image.Image
    model: str
    kept_as_boxes: int  # boxes where the segmenter found nothing, masked whole


class Segmenter:
    """SAM (transformers' SamModel) prompted with boxes, loaded on first use and kept for the server's life."""

    def __init__(
        self, spec: str = AUTO, *, model_dirs: Sequence[Path] = (), device: str = "cpu", offline: bool = False
    ) -> None:
        self.spec = spec.strip() or AUTO
        self.model_dirs = list(model_dirs)
        self.device = device
        self.offline = offline
        self._loaded: tuple[str, Any, Any] | None = None
        self._lock = threading.Lock()

    @classmethod
    def from_settings(cls, settings: "Settings", *, offline: bool) -> "Segmenter":
        return cls(settings.segmenter, model_dirs=settings.model_dirs, offline=offline)

    def chosen(self) -> tuple[str, str] | None:
        """(name, where to load it from) of the model to use, or None when masks stay boxes."""
        lowered = self.spec.lower()
        if lowered == NONE:
            return None
        if lowered == AUTO:
            found = local_copy(DEFAULT_SEGMENTER, self.model_dirs)
            return (DEFAULT_SEGMENTER, str(found)) if found is not None else None
        local = Path(self.spec).expanduser()
        if local.is_dir():
            return self.spec, str(local)
        if _looks_like_path(self.spec):
            raise SegmenterError(
                f"mask_prompt: IMGTOOLS_SEGMENTER={self.spec!r} is not a folder; give a SAM model folder, a hub id "
                f"such as {DEFAULT_SEGMENTER}, auto (that one where it is on disk) or none (the VLM's boxes)"
            )
        return self.spec, self.spec

    def unused_reason(self) -> str:
        """Why masks are boxes, for the run's notes."""
        if self.spec.lower() == NONE:
            return "IMGTOOLS_SEGMENTER=none"
        return (
            f"IMGTOOLS_SEGMENTER=auto found no {DEFAULT_SEGMENTER} on disk; `hf download {DEFAULT_SEGMENTER}` "
            "to cut silhouettes"
        )

    def _load(self, name: str, where: str) -> tuple[Any, Any]:
        with self._lock:
            if self._loaded is None or self._loaded[0] != where:
                from transformers import SamModel, SamProcessor

                try:
                    processor = SamProcessor.from_pretrained(where, local_files_only=self.offline)
                    model = SamModel.from_pretrained(where, local_files_only=self.offline)
                except (OSError, ValueError) as exc:
                    raise SegmenterError(
                        f"mask_prompt: the segmenter {name!r} (IMGTOOLS_SEGMENTER) could not be loaded "
                        f"({type(exc).__name__}); run `hf download {name}` where the hub is reachable, or set "
                        "IMGTOOLS_SEGMENTER=none to mask the VLM's boxes"
                    ) from exc
                log.info("segmenter %s loaded from %s", name, where)
                self._loaded = (where, processor, model.to(self.device).eval())
            return self._loaded[1], self._loaded[2]

    def silhouettes(self, image: Image.Image, boxes: Sequence[Box]) -> Silhouettes | None:
        """The union of each box's silhouette (SAM's best of three by predicted IoU), grown and clipped to the
        box grown a little; None when no segmenter is in use."""
        chosen = self.chosen()
        if chosen is None:
            return None
        import torch

        name, where = chosen
        processor, model = self._load(name, where)
        image = image.convert("RGB")
        inputs = processor(images=image, input_boxes=[[[float(v) for v in box] for box in boxes]], return_tensors="pt")
        with torch.inference_mode():
            output = model(**inputs.to(self.device), multimask_output=True)
        cut = processor.image_processor.post_process_masks(
            output.pred_masks.cpu(), inputs["original_sizes"].cpu(), inputs["reshaped_input_sizes"].cpu()
        )[0]  # (boxes, 3, height, width), boolean
        best = output.iou_scores[0].argmax(dim=-1).cpu()
        union = np.zeros((image.height, image.width), dtype=bool)
        kept_as_boxes = 0
        for index, box in enumerate(boxes):
            silhouette = cut[index, int(best[index])].numpy().astype(bool)
            left, top, right, bottom = grown_box(box, image.size)
            inside = np.zeros_like(union)
            inside[top:bottom, left:right] = True
            silhouette = dilate(silhouette & inside, margin_for(box)) & inside
            if not silhouette.any():
                kept_as_boxes += 1
                silhouette = np.zeros_like(union)
                silhouette[box[1]:box[3], box[0]:box[2]] = True
            union |= silhouette
        return Silhouettes(Image.fromarray(np.where(union, 255, 0).astype(np.uint8), "L"), name, kept_as_boxes)
