"""Control maps on real pixels: OpenCV edges land on the drawn shape, depth from a tiny random Depth Anything model,
OpenPose skeletons drawn where the keypoints are and made by a tiny random ViTPose (with a tiny RT-DETR)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from imgtools_mcp.images.control_maps import (
    LIMB_SHADE,
    OPENPOSE_COLORS,
    OPENPOSE_LIMBS,
    ControlMapError,
    DepthEstimator,
    PoseEstimator,
    draw_openpose,
    make_control_map,
    openpose_from_coco,
)
from imgtools_mcp.testing.tiny_pose import make_test_person_detector, make_test_pose_model

BOX = (20, 16, 60, 44)  # left, top, right, bottom (inclusive) of the drawn rectangle


def drawing() -> Image.Image:
    image = Image.new("RGB", (80, 64), (20, 30, 40))
    ImageDraw.Draw(image).rectangle(BOX, fill=(230, 220, 210))
    return image


def outline() -> np.ndarray:
    """(n, 2) y, x of the rectangle's one-pixel outline."""
    left, top, right, bottom = BOX
    points = [(y, x) for x in range(left, right + 1) for y in (top, bottom)]
    points += [(y, x) for y in range(top, bottom + 1) for x in (left, right)]
    return np.array(points)


def distance_to_border(ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
    """Chessboard distance from each pixel to the nearest outline pixel."""
    border = outline()
    return np.maximum(np.abs(ys[:, None] - border[None, :, 0]), np.abs(xs[:, None] - border[None, :, 1])).min(axis=1)


@pytest.mark.parametrize("kind", ["canny", "lineart", "scribble"])
def test_edges_land_on_the_drawn_shape(kind: str) -> None:
    made = make_control_map(kind, drawing())
    assert made.size == (80, 64) and made.mode == "RGB"
    lit = np.asarray(made.convert("L")) > 127
    ys, xs = np.nonzero(lit)
    assert len(xs) > 100, "no edges found"
    reach = 4 if kind == "scribble" else 2
    assert distance_to_border(ys, xs).max() <= reach  # nothing lit away from the shape's outline
    # ...and the whole outline is found: every border pixel has an edge within reach.
    border = outline()
    found = sum(lit[max(0, y - reach) : y + reach + 1, max(0, x - reach) : x + reach + 1].any() for y, x in border)
    assert found / len(border) > 0.95


def test_image_and_tile_pass_the_picture_through() -> None:
    picture = drawing()
    assert np.array_equal(np.asarray(make_control_map("image", picture)), np.asarray(picture))
    assert np.array_equal(np.asarray(make_control_map("tile", picture)), np.asarray(picture))


@pytest.fixture(scope="module")
def tiny_depth_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Depth Anything's architecture with a 4-layer, 32-wide DINOv2 backbone and random weights, from configs only."""
    import torch
    from transformers import DepthAnythingConfig, DepthAnythingForDepthEstimation, Dinov2Config, DPTImageProcessor

    folder = tmp_path_factory.mktemp("depth")
    torch.manual_seed(0)
    backbone = Dinov2Config(
        hidden_size=32, num_hidden_layers=4, num_attention_heads=2, intermediate_size=37, image_size=56, patch_size=14,
        out_features=["stage1", "stage2", "stage3", "stage4"], reshape_hidden_states=False,
    )
    config = DepthAnythingConfig(
        backbone_config=backbone, neck_hidden_sizes=[16, 16, 16, 16], fusion_hidden_size=16, head_hidden_size=8,
        reassemble_hidden_size=32, patch_size=14,
    )
    DepthAnythingForDepthEstimation(config).save_pretrained(folder)
    DPTImageProcessor(
        size={"height": 56, "width": 56}, keep_aspect_ratio=True, ensure_multiple_of=14,
        image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225],
    ).save_pretrained(folder)
    return folder


def test_depth_map_from_a_transformers_depth_model(tiny_depth_model: Path) -> None:
    estimator = DepthEstimator(str(tiny_depth_model), offline=True)
    made = make_control_map("depth", drawing(), depth=estimator)
    assert made.size == (80, 64) and made.mode == "RGB"
    gray = np.asarray(made.convert("L"))
    assert gray.min() == 0 and gray.max() == 255  # relative depth stretched to the full range
    again = make_control_map("depth", drawing(), depth=estimator)
    assert np.array_equal(np.asarray(again), np.asarray(made))  # loaded once, deterministic


def test_a_depth_model_that_is_not_there_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ControlMapError, match="control: the depth model .* could not be loaded"):
        make_control_map("depth", drawing(), depth=DepthEstimator(str(tmp_path / "missing"), offline=True))


# ----- pose -----

# A standing figure in OpenPose order (x, y, score) on a 256 px canvas; the left ankle (13) scores under the threshold.
FIGURE = np.array([
    (128, 40, 0.9), (128, 70, 0.9), (98, 70, 0.9), (78, 110, 0.9), (70, 150, 0.9), (158, 70, 0.9), (178, 110, 0.9),
    (186, 150, 0.9), (108, 150, 0.9), (104, 195, 0.9), (100, 240, 0.9), (148, 150, 0.9), (152, 195, 0.9),
    (156, 240, 0.1), (120, 32, 0.9), (136, 32, 0.9), (110, 38, 0.9), (146, 38, 0.9),
], dtype=np.float64)
SHADED = [tuple(int(c * LIMB_SHADE) for c in color) for color in OPENPOSE_COLORS]


def distance_to_segment(points: np.ndarray, start: np.ndarray, end: np.ndarray) -> np.ndarray:
    span = end - start
    along = np.clip(((points - start) @ span) / max(float(span @ span), 1e-9), 0.0, 1.0)
    return np.linalg.norm(points - (start + along[:, None] * span), axis=1)


def test_openpose_skeleton_is_drawn_at_the_keypoints_in_openposes_colours() -> None:
    made = draw_openpose((256, 256), [FIGURE])
    assert made.size == (256, 256) and made.mode == "RGB"
    pixels = np.asarray(made)
    unit = 2  # 256 px: limbs 2 px either side of the line, joints of radius 2
    for index, (x, y, score) in enumerate(FIGURE):
        if score >= 0.3:
            assert tuple(pixels[int(y), int(x)]) == OPENPOSE_COLORS[index], index  # each joint its own colour
    drawn = [(a, b) for a, b in OPENPOSE_LIMBS if FIGURE[a, 2] >= 0.3 and FIGURE[b, 2] >= 0.3]
    assert len(drawn) == len(OPENPOSE_LIMBS) - 1  # the limb to the low-scoring ankle is left out
    for limb, (a, b) in enumerate(OPENPOSE_LIMBS):
        x, y = np.round((FIGURE[a, :2] + FIGURE[b, :2]) / 2).astype(int)
        expected = SHADED[limb] if (a, b) in drawn else (0, 0, 0)
        assert tuple(pixels[y, x]) == expected, (a, b)  # each limb's middle in its colour, at 60%
    ankle_x, ankle_y = FIGURE[13, :2].astype(int)
    assert not pixels[ankle_y - 4 : ankle_y + 5, ankle_x - 4 : ankle_x + 5].any()  # no dot for the dropped ankle
    # Black everywhere else: every lit pixel lies on a drawn limb or joint.
    ys, xs = np.nonzero(pixels.any(axis=2))
    lit = np.stack([xs, ys], axis=1).astype(np.float64)
    nearest = np.min([distance_to_segment(lit, FIGURE[a, :2], FIGURE[b, :2]) for a, b in drawn], axis=0)
    assert nearest.max() <= unit + 1
    colours = {tuple(c) for c in pixels[ys, xs]}
    assert colours <= set(OPENPOSE_COLORS) | set(SHADED)


def test_coco_keypoints_become_openposes_18_with_a_neck_between_the_shoulders() -> None:
    coco = np.array([(float(i), float(100 + i), 0.5 + i / 100) for i in range(17)])
    openpose = openpose_from_coco(coco)
    assert openpose.shape == (18, 3)
    assert np.allclose(openpose[1], [5.5, 105.5, 0.55])  # neck: the shoulders' (5, 6) midpoint, the lower score
    assert openpose[0, 0] == 0 and openpose[2, 0] == 6 and openpose[5, 0] == 5  # nose; right, left shoulder
    assert openpose[14, 0] == 2 and openpose[15, 0] == 1 and openpose[16, 0] == 4 and openpose[17, 0] == 3  # eyes, ears


@pytest.fixture(scope="module")
def tiny_pose(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("pose")
    return make_test_pose_model(folder / "vitpose"), make_test_person_detector(folder / "rtdetr")


@pytest.mark.parametrize("with_detector", [False, True])
def test_pose_map_from_vitpose(tiny_pose: tuple[Path, Path], with_detector: bool) -> None:
    pose_model, detector = tiny_pose
    estimator = PoseEstimator(str(pose_model), detector=str(detector) if with_detector else "none", offline=True)
    boxes = estimator.person_boxes(drawing())
    if with_detector:  # the random detector's people, inside the image
        assert boxes and all(0 <= x and 0 <= y and w > 0 and h > 0 and x + w <= 80 and y + h <= 64 for x, y, w, h in boxes)
    else:
        assert boxes == [[0.0, 0.0, 80.0, 64.0]]
    people = estimator.people(drawing())
    assert len(people) == len(boxes) and all(person.shape == (17, 3) for person in people)
    made = make_control_map("pose", drawing(), pose=estimator)
    assert made.size == (80, 64) and made.mode == "RGB"
    pixels = np.asarray(made)
    lit = pixels.any(axis=2)
    assert 0 < lit.sum() < lit.size // 2  # a skeleton on black
    assert {tuple(c) for c in pixels[lit]} <= set(OPENPOSE_COLORS) | set(SHADED)
    again = make_control_map("pose", drawing(), pose=estimator)
    assert np.array_equal(np.asarray(again), pixels)  # loaded once, deterministic


def test_a_pose_model_or_detector_that_is_not_there_is_a_clear_error(tiny_pose: tuple[Path, Path], tmp_path: Path) -> None:
    pose_model, detector = tiny_pose
    missing = str(tmp_path / "missing")
    with pytest.raises(ControlMapError, match=r"^control: the pose model .*missing' could not be loaded .* `hf download .*missing`"):
        make_control_map("pose", drawing(), pose=PoseEstimator(missing, detector=str(detector), offline=True))
    with pytest.raises(ControlMapError, match=r"^control: the person detector .* IMGTOOLS_PERSON_DETECTOR=none"):
        make_control_map("pose", drawing(), pose=PoseEstimator(str(pose_model), detector=missing, offline=True))
