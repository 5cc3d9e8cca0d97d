"""Control maps on real pixels: OpenCV edges land on the drawn shape, depth from a tiny random Depth Anything model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from imgtools_mcp.images.control_maps import ControlMapError, DepthEstimator, make_control_map

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


def test_image_and_tile_pass_the_picture_through_and_pose_says_what_to_do() -> None:
    picture = drawing()
    assert np.array_equal(np.asarray(make_control_map("image", picture)), np.asarray(picture))
    with pytest.raises(ControlMapError, match="control: .*type 'image'"):
        make_control_map("pose", picture)


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
