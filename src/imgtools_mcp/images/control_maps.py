"""Control maps for ControlNet: canny, lineart and scribble with OpenCV, depth with a transformers model, tile, as given.

Every map is an RGB image the size of its input (white structure on black, as the ControlNets were
trained on; depth is near = bright). `image` means the caller already made the map.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any, Literal

import numpy as np
from PIL import Image

log = logging.getLogger(__name__)

ControlType = Literal["canny", "depth", "pose", "lineart", "scribble", "tile", "image"]
CONTROL_TYPES: tuple[str, ...] = ("canny", "depth", "pose", "lineart", "scribble", "tile", "image")
DEFAULT_DEPTH_MODEL = "depth-anything/Depth-Anything-V2-Small-hf"


class ControlMapError(ValueError):
    """A control map that cannot be made; the message starts with the parameter and says what to do."""


def _cv2(param: str) -> Any:
    try:
        import cv2
    except ImportError as exc:
        raise ControlMapError(
            f"{param}: canny, lineart and scribble maps need OpenCV (`pip install 'imgtools-mcp[control]'`); "
            "or pass an already-made map with type 'image'"
        ) from exc
    return cv2


def _gray(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("L"), dtype=np.uint8)


def _rgb(single: np.ndarray) -> Image.Image:
    return Image.fromarray(np.repeat(single[..., None], 3, axis=2), "RGB")


def canny(image: Image.Image, low: int = 100, high: int = 200, *, param: str = "control") -> Image.Image:
    """Canny edges (A1111/SD.Next defaults 100/200): one-pixel white edges on black."""
    cv2 = _cv2(param)
    return _rgb(cv2.Canny(_gray(image), low, high))


def lineart(image: Image.Image, *, param: str = "control") -> Image.Image:
    """Line drawing without weights: the image divided by its blur (a pencil sketch), inverted so lines are white."""
    cv2 = _cv2(param)
    gray = _gray(image).astype(np.float32)
    blurred = cv2.GaussianBlur(gray, (0, 0), sigmaX=max(1.0, min(image.size) / 128))
    sketch = np.clip(gray / np.maximum(blurred, 1.0), 0.0, 1.0)  # 1 on flat areas, darker where a line is
    lines = np.clip((1.0 - sketch) * 4.0, 0.0, 1.0)  # stretch: faint strokes still read as lines
    return _rgb(np.round(lines * 255).astype(np.uint8))


def scribble(image: Image.Image, *, param: str = "control") -> Image.Image:
    """Thick white strokes on black (what scribble ControlNets expect): canny edges, dilated."""
    cv2 = _cv2(param)
    edges = cv2.Canny(cv2.GaussianBlur(_gray(image), (5, 5), 0), 50, 150)
    thickness = max(3, min(image.size) // 128)
    return _rgb(cv2.dilate(edges, np.ones((thickness, thickness), np.uint8)))


class DepthEstimator:
    """A transformers depth model (Depth Anything V2 small by default), loaded on first use and kept."""

    def __init__(self, spec: str = DEFAULT_DEPTH_MODEL, *, device: str = "cpu", offline: bool = False) -> None:
        self.spec = spec
        self.device = device
        self.offline = offline
        self._loaded: tuple[Any, Any] | None = None
        self._lock = threading.Lock()

    def _load(self, param: str) -> tuple[Any, Any]:
        with self._lock:
            if self._loaded is None:
                from transformers import AutoImageProcessor, AutoModelForDepthEstimation

                local = Path(self.spec).expanduser()
                where = str(local) if local.is_dir() else self.spec
                try:
                    processor = AutoImageProcessor.from_pretrained(where, local_files_only=self.offline)
                    model = AutoModelForDepthEstimation.from_pretrained(where, local_files_only=self.offline)
                except (OSError, ValueError) as exc:
                    raise ControlMapError(
                        f"{param}: the depth model {self.spec!r} could not be loaded ({type(exc).__name__}); run "
                        f"`hf download {self.spec}` where the hub is reachable, or pass an already-made depth map with type 'image'"
                    ) from exc
                self._loaded = (processor, model.to(self.device).eval())
            return self._loaded

    def __call__(self, image: Image.Image, *, param: str = "control") -> Image.Image:
        import torch

        processor, model = self._load(param)
        inputs = processor(images=image.convert("RGB"), return_tensors="pt").to(self.device)
        with torch.inference_mode():
            output = model(**inputs)
        depth = processor.post_process_depth_estimation(output, target_sizes=[(image.height, image.width)])[0]["predicted_depth"]
        depth = depth.float().cpu().numpy()
        span = float(depth.max() - depth.min())
        # Relative depth: the map only has to order near and far, so it is stretched to the full 0-255 range.
        scaled = (depth - depth.min()) / span if span > 0 else np.zeros_like(depth)
        return _rgb(np.round(scaled * 255).astype(np.uint8))


def make_control_map(
    kind: str, image: Image.Image, *, depth: DepthEstimator | None = None, param: str = "control"
) -> Image.Image:
    """The map of `kind` for `image` (the image itself for `image` and `tile`)."""
    if kind == "image":
        return image.convert("RGB")
    if kind == "tile":
        return image.convert("RGB")  # tile ControlNets condition on the picture itself (upscales, detail passes)
    if kind == "canny":
        return canny(image, param=param)
    if kind == "lineart":
        return lineart(image, param=param)
    if kind == "scribble":
        return scribble(image, param=param)
    if kind == "depth":
        return (depth or DepthEstimator())(image, param=param)
    if kind == "pose":
        raise ControlMapError(
            f"{param}: this server has no pose estimator (OpenPose/DWPose need weights it does not ship); make the pose "
            "map elsewhere (an OpenPose skeleton image) and pass it with type 'image'"
        )
    raise ControlMapError(f"{param}: unknown control type {kind!r}; use one of {', '.join(CONTROL_TYPES)}")
