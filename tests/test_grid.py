"""Grid rendering for sweeps: layout arithmetic, label wrapping, placeholders and sheets, without an engine."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from imgtools_mcp.images.grid import (
    BACKGROUND,
    ELLIPSIS,
    PLACEHOLDER_FILL,
    label_font,
    placeholder_tile,
    plan_grid,
    plan_sheet,
    render_grid,
    render_sheet,
    text_width,
    wrap_text,
)


def solid(size: tuple[int, int], colour: tuple[int, int, int]) -> Image.Image:
    return Image.new("RGB", size, colour)


def dark_pixels(image: Image.Image, box: tuple[int, int, int, int]) -> int:
    """Pixels clearly darker than the white background inside box (left, top, right, bottom)."""
    region = np.asarray(image.crop(box).convert("L"))
    return int((region < 160).sum())


def test_tiles_land_exactly_in_their_boxes_and_labels_fill_the_margins() -> None:
    colours = [[(255, 0, 0), (0, 255, 0), (0, 0, 255)], [(255, 255, 0), (0, 255, 255), (255, 0, 255)]]
    layout = plan_grid([64, 64, 64], [64, 64], ["seed: 1", "seed: 2", "seed: 3"], ["steps: 10", "steps: 20"])
    grid = render_grid(layout, [[solid((64, 64), c) for c in row] for row in colours])
    left, top = layout.label_width, layout.label_height
    assert left > 0 and top > 0 and layout.title_height == 0
    assert grid.size == (left + 3 * 64, top + 2 * 64) == layout.size
    for row in range(2):
        for column in range(3):
            x, y, w, h = layout.tile_box(row, column)
            tile = np.asarray(grid.crop((x, y, x + w, y + h)))
            assert (tile == colours[row][column]).all(), (row, column)
    # Every column label and every row label put ink in its own stretch of the margin.
    for x, w in zip(layout.column_lefts, layout.column_widths):
        assert dark_pixels(grid, (x, 0, x + w, top)) > 20
    for y, h in zip(layout.row_tops, layout.row_heights):
        assert dark_pixels(grid, (0, y, left, y + h)) > 20
    assert np.asarray(grid.crop((0, 0, left, top))).min() == 255  # the corner stays empty


def test_without_labels_there_are_no_margins() -> None:
    layout = plan_grid([32, 48], [40], ["", ""], [""])
    assert (layout.label_width, layout.label_height, layout.title_height) == (0, 0, 0)
    assert layout.size == (80, 40)


def test_title_band_sits_above_the_column_labels() -> None:
    layout = plan_grid([64], [64], ["a"], [""], title="sampler: euler_a")
    grid = render_grid(layout, [[solid((64, 64), (0, 0, 0))]])
    assert layout.title_height > 0
    assert dark_pixels(grid, (0, 0, grid.width, layout.title_height)) > 20
    assert layout.row_tops[0] == layout.title_height + layout.label_height


def test_mixed_tile_sizes_use_the_largest_per_column_and_row_and_centre_smaller_ones() -> None:
    layout = plan_grid([96, 64], [64, 80], ["w: 96", "w: 64"], ["r1", "r2"])
    small = solid((64, 64), (10, 20, 30))
    grid = render_grid(layout, [[small, small], [small, None]])
    x, y, w, h = layout.tile_box(0, 0)
    cell = np.asarray(grid.crop((x, y, x + w, y + h)))
    assert (cell[:, 16:80] == (10, 20, 30)).all() and (cell[:, :16] == BACKGROUND).all()
    x, y, w, h = layout.tile_box(1, 1)
    assert (np.asarray(grid.crop((x, y, x + w, y + h))) == BACKGROUND).all()  # None stays blank


def test_tiles_larger_than_their_box_are_shrunk_to_fit() -> None:
    layout = plan_grid([32], [32], [""], [""])
    grid = render_grid(layout, [[solid((128, 64), (200, 0, 0))]])
    assert grid.size == (32, 32)
    assert (np.asarray(grid)[8:24] == (200, 0, 0)).all()  # 32x16 band, centred


def test_long_labels_wrap_and_truncate_with_an_ellipsis() -> None:
    font = label_font(12)
    label = "prompt_sr: " + "a very long replacement text " * 10
    lines = wrap_text(label, font, 60, 3)
    assert len(lines) == 3 and lines[-1].endswith(ELLIPSIS)
    assert all(text_width(line, font) <= 60 for line in lines)
    # A word longer than the line (a model path) is broken rather than overflowing.
    path_lines = wrap_text("model: /models/checkpoints/realisticVisionV60B1_v51HyperVAE.safetensors", font, 60, 8)
    assert all(text_width(line, font) <= 60 for line in path_lines)
    assert "".join(path_lines).replace(" ", "") == "model:/models/checkpoints/realisticVisionV60B1_v51HyperVAE.safetensors"
    layout = plan_grid([64], [64], [label], [label])
    assert len(layout.column_lines[0]) <= 3 and layout.column_lines[0][-1].endswith(ELLIPSIS)
    assert layout.label_width <= 12 * layout.font_size + 1  # a long row label wraps instead of widening the sheet
    # A parameter name and value fit on one line beside small tiles.
    assert plan_grid([46], [46], ["seed: 10"], ["guidance_scale: 7.5"]).row_lines == (("guidance_scale: 7.5",),)


def test_short_text_is_one_line() -> None:
    assert wrap_text("steps: 20", label_font(12), 200, 3) == ["steps: 20"]


def test_font_grows_with_tiles_within_bounds() -> None:
    assert plan_grid([64], [64], ["a"], [""]).font_size == 12
    assert plan_grid([512], [512], ["a"], [""]).font_size == 40
    assert plan_grid([2048], [2048], ["a"], [""]).font_size == 64


def test_placeholder_carries_its_text() -> None:
    tile = placeholder_tile((96, 96), "steps: must be >= 1 (got 0)")
    pixels = np.asarray(tile)
    assert tile.size == (96, 96)
    assert (pixels == PLACEHOLDER_FILL).mean() > 0.6
    assert (pixels.min(axis=-1) > 200).sum() > 20  # light text on the dark fill
    assert not (np.asarray(placeholder_tile((96, 96), "")) > 200).any()


def test_sheet_picks_the_squarer_arrangement() -> None:
    wide = plan_sheet([(300, 100), (300, 100)], gap=10)
    assert wide.size == (300, 210) and wide.positions == ((0, 0), (0, 110))
    tall = plan_sheet([(100, 300), (100, 300)], gap=10)
    assert tall.size == (210, 300) and tall.positions == ((0, 0), (110, 0))
    sheet = render_sheet(tall, [solid((100, 300), (1, 2, 3)), solid((100, 300), (4, 5, 6))])
    assert sheet.getpixel((50, 150)) == (1, 2, 3) and sheet.getpixel((160, 150)) == (4, 5, 6)
    assert sheet.getpixel((105, 150)) == BACKGROUND


@pytest.mark.parametrize(
    "columns, rows, column_labels, row_labels",
    [([], [64], [], [""]), ([64], [64], ["a", "b"], [""]), ([0], [64], ["a"], [""])],
)
def test_bad_layout_requests_are_refused(columns, rows, column_labels, row_labels) -> None:
    with pytest.raises(ValueError):
        plan_grid(columns, rows, column_labels, row_labels)


class CountingFont:
    """A font that counts what it is asked to measure, so a test can bound the work wrapping does."""

    def __init__(self) -> None:
        self.font = label_font(12)
        self.calls = 0
        self.characters = 0

    def getlength(self, text: str) -> float:
        self.calls += 1
        self.characters += len(text)
        return self.font.getlength(text)


@pytest.mark.parametrize("label", ["x" * 200_000, "word " * 40_000, "/" + "a" * 50_000 + " tail " * 10_000])
def test_wrapping_a_huge_label_stops_after_the_lines_kept(label: str) -> None:
    font = CountingFont()
    lines = wrap_text(label, font, 60, 3)
    assert len(lines) == 3 and lines[-1].endswith("…")
    assert all(font.font.getlength(line) <= 60 for line in lines)
    # Bounded work whatever the label's length: a few binary searches over at most one line's characters.
    assert font.calls < 200 and font.characters < 20_000, (font.calls, font.characters)


def test_a_label_cut_before_measuring_still_says_so() -> None:
    lines = wrap_text("a" * 2000, label_font(12), 100_000, 3)
    assert len(lines) == 1 and lines[0].endswith("…")
