"""Control maps for ControlNet: canny, lineart and scribble with OpenCV, depth and pose with transformers models, tile, as given.

Every map is an RGB image the size of its input (white structure on black, as the ControlNets were
trained on; depth is near = bright; pose is an OpenPose skeleton). `image` means the caller already made the map.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from PIL import Image

if TYPE_CHECKING:
    from ..config import Settings

log = logging.getLogger(__name__)

ControlType = Literal["canny", "depth", "pose", "lineart", "scribble", "tile", "image"]
CONTROL_TYPES: tuple[str, ...] = ("canny", "depth", "pose", "lineart", "scribble", "tile", "image")
DEFAULT_DEPTH_MODEL = "depth-anything/Depth-Anything-V2-Small-hf"
DEFAULT_POSE_MODEL = "usyd-community/vitpose-base-simple"
DEFAULT_PERSON_DETECTOR = "PekingU/rtdetr_r50vd_coco_o365"
NO_DETECTOR = "none"
PERSON_THRESHOLD = 0.3  # RT-DETR score a box needs to count as a person (ViTPose's own top-down example uses 0.3)
KEYPOINT_THRESHOLD = 0.3  # ViTPose score a keypoint needs to be drawn; below it the joint and its limbs are left out


class ControlMapError(ValueError):
    """A control map that cannot be made; the message starts with the parameter and says what to do."""


def _cv2(param: str) -> Any:
    try:
        import cv2
    except ImportError as exc:
        raise ControlMapError(
            f"{param}: canny, lineart, scribble and pose maps need OpenCV (`pip install 'imgtools-mcp[control]'`); "
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


def _load_pretrained(
    spec: str, processor_class: Any, model_class: Any, *, device: str, offline: bool, failure: str, instead: str
) -> tuple[Any, Any]:
    """A transformers processor and model from a local folder or a hub id, or a ControlMapError saying what to download."""
    local = Path(spec).expanduser()
    where = str(local) if local.is_dir() else spec
    try:
        processor = processor_class.from_pretrained(where, local_files_only=offline)
        model = model_class.from_pretrained(where, local_files_only=offline)
    except (OSError, ValueError) as exc:
        raise ControlMapError(
            f"{failure} ({type(exc).__name__}); run `hf download {spec}` where the hub is reachable, {instead}"
        ) from exc
    return processor, model.to(device).eval()


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

                self._loaded = _load_pretrained(
                    self.spec, AutoImageProcessor, AutoModelForDepthEstimation, device=self.device, offline=self.offline,
                    failure=f"{param}: the depth model {self.spec!r} could not be loaded",
                    instead="or pass an already-made depth map with type 'image'",
                )
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


# OpenPose's 18 body points: 0 nose, 1 neck, 2-4 right shoulder/elbow/wrist, 5-7 left shoulder/elbow/wrist,
# 8-10 right hip/knee/ankle, 11-13 left hip/knee/ankle, 14/15 right/left eye, 16/17 right/left ear.
# COCO's index for each (the neck, 1, is the shoulders' midpoint and has none).
OPENPOSE_FROM_COCO = (0, None, 6, 8, 10, 5, 7, 9, 12, 14, 16, 11, 13, 15, 2, 1, 4, 3)
# The limbs OpenPose draws, as pairs of the points above, and its colour per limb and per point (RGB), as the
# pose ControlNets' training maps (lllyasviel's annotator, controlnet_aux) draw them.
OPENPOSE_LIMBS = (
    (1, 2), (1, 5), (2, 3), (3, 4), (5, 6), (6, 7), (1, 8), (8, 9), (9, 10),
    (1, 11), (11, 12), (12, 13), (1, 0), (0, 14), (14, 16), (0, 15), (15, 17),
)
OPENPOSE_COLORS = (
    (255, 0, 0), (255, 85, 0), (255, 170, 0), (255, 255, 0), (170, 255, 0), (85, 255, 0), (0, 255, 0),
    (0, 255, 85), (0, 255, 170), (0, 255, 255), (0, 170, 255), (0, 85, 255), (0, 0, 255), (85, 0, 255),
    (170, 0, 255), (255, 0, 255), (255, 0, 170), (255, 0, 85),
)
LIMB_SHADE = 0.6  # limbs are drawn at 60% of their colour, joints at full colour on top


def openpose_from_coco(keypoints: np.ndarray) -> np.ndarray:
    """(17, 3) COCO x, y, score -> (18, 3) OpenPose order, with the neck at the shoulders' midpoint (the lower score)."""
    shoulders = keypoints[[5, 6]]
    neck = np.array([*shoulders[:, :2].mean(axis=0), shoulders[:, 2].min()])
    return np.stack([neck if index is None else keypoints[index] for index in OPENPOSE_FROM_COCO])


def draw_openpose(
    size: tuple[int, int], people: Sequence[np.ndarray], *, threshold: float = KEYPOINT_THRESHOLD, param: str = "control"
) -> Image.Image:
    """An OpenPose skeleton on black, `size` (width, height): each person (18, 3) x, y, score in OpenPose order.

    Points scoring under `threshold` are left out with every limb that ends at them. Limbs are ellipses 4 px
    either side of the line at 512 px (scaled with the image), joints dots of that radius, in OpenPose's colours.
    """
    cv2 = _cv2(param)
    width, height = size
    canvas = np.zeros((height, width, 3), np.uint8)
    unit = max(1, round(min(width, height) / 128))
    for person in people:
        shown = person[:, 2] >= threshold
        for (start, end), color in zip(OPENPOSE_LIMBS, OPENPOSE_COLORS):
            if not (shown[start] and shown[end]):
                continue
            (x0, y0), (x1, y1) = person[start, :2], person[end, :2]
            length = math.hypot(x1 - x0, y1 - y0)
            angle = math.degrees(math.atan2(y1 - y0, x1 - x0))
            center = (int(round((x0 + x1) / 2)), int(round((y0 + y1) / 2)))
            polygon = cv2.ellipse2Poly(center, (int(round(length / 2)), unit), int(round(angle)), 0, 360, 1)
            cv2.fillConvexPoly(canvas, polygon, [int(c * LIMB_SHADE) for c in color])
    for person in people:
        for (x, y, score), color in zip(person, OPENPOSE_COLORS):
            if score >= threshold:
                cv2.circle(canvas, (int(round(x)), int(round(y))), unit, color, thickness=-1)
    return Image.fromarray(canvas, "RGB")


class PoseEstimator:
    """ViTPose (transformers) on each person an RT-DETR detector finds, drawn as an OpenPose skeleton.

    ViTPose is top-down: it places 17 COCO keypoints inside a person's box. The boxes come from the person
    detector; with `detector="none"`, or where it finds no one, the whole image is one person's box (right
    for a single figure that fills the frame, which is what a pose reference usually is). Both models are
    loaded on first use and kept.
    """

    def __init__(
        self,
        spec: str = DEFAULT_POSE_MODEL,
        *,
        detector: str = DEFAULT_PERSON_DETECTOR,
        device: str = "cpu",
        offline: bool = False,
        person_threshold: float = PERSON_THRESHOLD,
    ) -> None:
        self.spec = spec
        self.detector = None if detector.strip().lower() in ("", NO_DETECTOR) else detector
        self.device = device
        self.offline = offline
        self.person_threshold = person_threshold
        self._pose: tuple[Any, Any] | None = None
        self._detector: tuple[Any, Any, int] | None = None
        self._lock = threading.Lock()

    def _load_pose(self, param: str) -> tuple[Any, Any]:
        with self._lock:
            if self._pose is None:
                from transformers import AutoProcessor, VitPoseForPoseEstimation

                self._pose = _load_pretrained(
                    self.spec, AutoProcessor, VitPoseForPoseEstimation, device=self.device, offline=self.offline,
                    failure=f"{param}: the pose model {self.spec!r} could not be loaded",
                    instead="or pass an already-made OpenPose skeleton with type 'image'",
                )
            return self._pose

    def _load_detector(self, spec: str, param: str) -> tuple[Any, Any, int]:
        with self._lock:
            if self._detector is None:
                from transformers import AutoImageProcessor, RTDetrForObjectDetection

                processor, model = _load_pretrained(
                    spec, AutoImageProcessor, RTDetrForObjectDetection, device=self.device, offline=self.offline,
                    failure=f"{param}: the person detector {spec!r} could not be loaded",
                    instead="or set IMGTOOLS_PERSON_DETECTOR=none to pose the whole image as one person",
                )
                labels = {str(name).lower(): int(index) for index, name in model.config.id2label.items()}
                if "person" not in labels:
                    raise ControlMapError(
                        f"{param}: the person detector {spec!r} has no 'person' label; use an RT-DETR trained on "
                        f"COCO such as {DEFAULT_PERSON_DETECTOR}, or set IMGTOOLS_PERSON_DETECTOR=none"
                    )
                self._detector = (processor, model, labels["person"])
            return self._detector

    def person_boxes(self, image: Image.Image, *, param: str = "control") -> list[list[float]]:
        """COCO boxes (x, y, width, height) of the people found, best first; the whole image when none is."""
        whole = [[0.0, 0.0, float(image.width), float(image.height)]]
        if self.detector is None:
            return whole
        import torch

        processor, model, person = self._load_detector(self.detector, param)
        inputs = processor(images=image, return_tensors="pt").to(self.device)
        with torch.inference_mode():
            output = model(**inputs)
        found = processor.post_process_object_detection(
            output, threshold=self.person_threshold, target_sizes=[(image.height, image.width)]
        )[0]
        boxes = []
        for score, label, (x0, y0, x1, y1) in sorted(
            zip(found["scores"].tolist(), found["labels"].tolist(), found["boxes"].tolist()), key=lambda row: -row[0]
        ):
            x0, y0 = max(0.0, x0), max(0.0, y0)
            x1, y1 = min(float(image.width), x1), min(float(image.height), y1)
            if label == person and x1 > x0 and y1 > y0:
                boxes.append([x0, y0, x1 - x0, y1 - y0])
        return boxes or whole

    def people(self, image: Image.Image, *, param: str = "control") -> list[np.ndarray]:
        """Each person's 17 COCO keypoints as (17, 3) x, y, score in image pixels."""
        import torch

        image = image.convert("RGB")
        processor, model = self._load_pose(param)  # first: a missing pose model is named before a missing detector
        boxes = self.person_boxes(image, param=param)
        inputs = processor(image, boxes=[boxes], return_tensors="pt").to(self.device)
        with torch.inference_mode():
            output = model(**inputs)
        found = processor.post_process_pose_estimation(output, boxes=[boxes])[0]
        return [
            np.concatenate([one["keypoints"].float().cpu().numpy(), one["scores"].float().cpu().numpy()[:, None]], axis=1)
            for one in found
        ]

    def __call__(self, image: Image.Image, *, param: str = "control") -> Image.Image:
        _cv2(param)  # say OpenCV is missing before loading any model
        people = [openpose_from_coco(keypoints) for keypoints in self.people(image, param=param)]
        return draw_openpose(image.size, people, param=param)


@dataclass
class ControlModels:
    """The weight-backed map makers of one server (depth, pose), each loading its models on first use."""

    depth: DepthEstimator
    pose: PoseEstimator

    @classmethod
    def from_settings(cls, settings: "Settings", *, offline: bool) -> "ControlModels":
        return cls(
            DepthEstimator(settings.depth_model, offline=offline),
            PoseEstimator(settings.pose_model, detector=settings.person_detector, offline=offline),
        )


def make_control_map(
    kind: str,
    image: Image.Image,
    *,
    depth: DepthEstimator | None = None,
    pose: PoseEstimator | None = None,
    param: str = "control",
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
        return (pose or PoseEstimator())(image, param=param)
    raise ControlMapError(f"{param}: unknown control type {kind!r}; use one of {', '.join(CONTROL_TYPES)}")
