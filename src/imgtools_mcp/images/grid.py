"""Contact sheets for sweeps: tiles in labelled columns and rows, placeholder tiles, and several grids on one sheet."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from PIL import Image, ImageDraw, ImageFont, ImageOps

from .refs import to_rgb

RGB = tuple[int, int, int]
BACKGROUND: RGB = (255, 255, 255)
LABEL_COLOUR: RGB = (24, 24, 24)
PLACEHOLDER_FILL: RGB = (72, 72, 72)
PLACEHOLDER_TEXT: RGB = (240, 240, 240)
PLACEHOLDER_EDGE: RGB = (128, 128, 128)
ELLIPSIS = "…"
MIN_FONT_SIZE = 12
MAX_FONT_SIZE = 64
MAX_LABEL_LINES = 3
MAX_TITLE_LINES = 2
MAX_LABEL_CHARS = 1000  # more than any kept lines can show; a longer label is cut before it is measured


@lru_cache(maxsize=16)
def label_font(size: int) -> Any:
    """Pillow's bundled font (FreeType Aileron where Pillow has FreeType, its bitmap font otherwise)."""
    return ImageFont.load_default(size=size)


def font_size_for(tile_width: int, tile_height: int) -> int:
    """A label size that reads well next to tiles of this size (A1111 uses (w + h) / 25), within bounds."""
    return max(MIN_FONT_SIZE, min(MAX_FONT_SIZE, (tile_width + tile_height) // 25))


def line_height(font_size: int) -> int:
    return round(font_size * 1.25)


def text_width(text: str, font: Any) -> float:
    return float(font.getlength(text))


def wrap_text(text: str, font: Any, max_width: float, max_lines: int) -> list[str]:
    """Greedy word wrap into at most `max_lines` lines no wider than `max_width`; overflow ends in an ellipsis.

    A word wider than a line is broken between characters, so a long model path still fits. Work stops
    once a line past the last kept one is started, so a huge label costs no more than a short one.
    """
    max_width = max(max_width, text_width("W", font))
    cut_off = len(text) > MAX_LABEL_CHARS
    text = text[:MAX_LABEL_CHARS]
    lines: list[str] = []
    current = ""
    for word in text.split():
        if len(lines) > max_lines:
            break
        candidate = f"{current} {word}" if current else word
        if text_width(candidate, font) <= max_width:
            current = candidate
            continue
        if current:
            lines.append(current)
            current = ""
        while len(lines) <= max_lines and text_width(word, font) > max_width:
            cut = _fitting_prefix(word, font, max_width)
            lines.append(word[:cut])
            word = word[cut:]
        current = word
    if current and len(lines) <= max_lines:
        lines.append(current)
    if len(lines) <= max_lines and not cut_off:
        return lines
    kept = lines[:max_lines]
    kept[-1] = _with_ellipsis(kept[-1], font, max_width)
    return kept


def _fitting_prefix(word: str, font: Any, max_width: float) -> int:
    """Length of the longest prefix of `word` that fits (at least one character, so wrapping always advances)."""
    # No glyph is narrower than a pixel, so a line never holds more characters than it is pixels wide.
    low, high = 1, min(len(word), int(max_width) + 1)
    while low < high:
        middle = (low + high + 1) // 2
        if text_width(word[:middle], font) <= max_width:
            low = middle
        else:
            high = middle - 1
    return low


def _with_ellipsis(line: str, font: Any, max_width: float) -> str:
    while line and text_width(line + ELLIPSIS, font) > max_width:
        line = line[:-1]
    return line.rstrip() + ELLIPSIS


@dataclass(frozen=True)
class GridLayout:
    """Where everything goes on one grid; computed without drawing, so a size limit can be checked up front."""

    column_widths: tuple[int, ...]
    row_heights: tuple[int, ...]
    font_size: int
    column_lines: tuple[tuple[str, ...], ...]
    row_lines: tuple[tuple[str, ...], ...]
    title_lines: tuple[str, ...]
    label_width: int  # left band for row labels (0 when there are none)
    label_height: int  # top band for column labels (0 when there are none)
    title_height: int

    @property
    def column_lefts(self) -> tuple[int, ...]:
        lefts, x = [], self.label_width
        for width in self.column_widths:
            lefts.append(x)
            x += width
        return tuple(lefts)

    @property
    def row_tops(self) -> tuple[int, ...]:
        tops, y = [], self.title_height + self.label_height
        for height in self.row_heights:
            tops.append(y)
            y += height
        return tuple(tops)

    @property
    def width(self) -> int:
        return self.label_width + sum(self.column_widths)

    @property
    def height(self) -> int:
        return self.title_height + self.label_height + sum(self.row_heights)

    @property
    def size(self) -> tuple[int, int]:
        return self.width, self.height

    def tile_box(self, row: int, column: int) -> tuple[int, int, int, int]:
        """(left, top, width, height) of the cell a tile is centred in."""
        return self.column_lefts[column], self.row_tops[row], self.column_widths[column], self.row_heights[row]


def _side_pad(pad: int, column_width: int) -> int:
    """Narrow columns (a thumbnail of many tiles) give their labels nearly all their width."""
    return max(1, min(pad, column_width // 16))


def plan_grid(
    column_widths: Sequence[int],
    row_heights: Sequence[int],
    column_labels: Sequence[str],
    row_labels: Sequence[str],
    title: str = "",
    font_size: int | None = None,
) -> GridLayout:
    """Lay out len(row_heights) × len(column_widths) tiles with their labels; empty labels take no margin."""
    if not column_widths or not row_heights:
        raise ValueError("a grid needs at least one column and one row")
    if len(column_labels) != len(column_widths) or len(row_labels) != len(row_heights):
        raise ValueError("one label per column and per row")
    if min(column_widths) < 1 or min(row_heights) < 1:
        raise ValueError("tile sizes must be positive")
    size = font_size or font_size_for(max(column_widths), max(row_heights))
    font = label_font(size)
    pad = max(4, size // 2)
    step = line_height(size)

    column_lines = tuple(
        tuple(wrap_text(label, font, width - 2 * _side_pad(pad, width), MAX_LABEL_LINES))
        for label, width in zip(column_labels, column_widths)
    )
    label_height = 0
    if any(column_lines):
        label_height = max(len(lines) for lines in column_lines) * step + 2 * pad

    label_width = 0
    row_lines: tuple[tuple[str, ...], ...] = tuple(() for _ in row_labels)
    if any(label.strip() for label in row_labels):
        natural = max(text_width(label[:MAX_LABEL_CHARS], font) for label in row_labels) + 2 * pad
        # Wide enough for short labels on one line; long ones wrap rather than push the tiles off the sheet.
        cap = max(max(column_widths), 12 * size)
        label_width = int(min(natural, cap)) + 1
        row_lines = tuple(
            tuple(wrap_text(label, font, label_width - 2 * pad, max(1, min(2 * MAX_LABEL_LINES, (height - pad) // step))))
            for label, height in zip(row_labels, row_heights)
        )

    total_width = label_width + sum(column_widths)
    title_lines: tuple[str, ...] = ()
    title_height = 0
    if title.strip():
        title_lines = tuple(wrap_text(title, font, total_width - 2 * pad, MAX_TITLE_LINES))
        title_height = len(title_lines) * step + 2 * pad
    return GridLayout(
        column_widths=tuple(column_widths),
        row_heights=tuple(row_heights),
        font_size=size,
        column_lines=column_lines,
        row_lines=row_lines,
        title_lines=title_lines,
        label_width=label_width,
        label_height=label_height,
        title_height=title_height,
    )


def _draw_centred(
    draw: ImageDraw.ImageDraw, lines: Sequence[str], box: tuple[int, int, int, int], font_size: int, fill: RGB
) -> None:
    font = label_font(font_size)
    left, top, width, height = box
    step = line_height(font_size)
    y = top + (height - len(lines) * step) / 2
    for line in lines:
        x = left + (width - text_width(line, font)) / 2
        draw.text((round(x), round(y)), line, font=font, fill=fill)
        y += step


def render_grid(layout: GridLayout, tiles: Sequence[Sequence[Image.Image | None]]) -> Image.Image:
    """Draw the grid: `tiles[row][column]`, each centred in its cell (shrunk to fit if larger); None stays blank."""
    if len(tiles) != len(layout.row_heights) or any(len(row) != len(layout.column_widths) for row in tiles):
        raise ValueError("tiles must be rows × columns as laid out")
    sheet = Image.new("RGB", layout.size, BACKGROUND)
    draw = ImageDraw.Draw(sheet)
    size = layout.font_size
    pad = max(4, layout.font_size // 2)
    if layout.title_lines:
        _draw_centred(draw, layout.title_lines, (pad, pad, layout.width - 2 * pad, layout.title_height - 2 * pad), size, LABEL_COLOUR)
    top_band = layout.title_height
    for lines, left, width in zip(layout.column_lines, layout.column_lefts, layout.column_widths):
        side = _side_pad(pad, width)
        _draw_centred(draw, lines, (left + side, top_band + pad, width - 2 * side, layout.label_height - 2 * pad), size, LABEL_COLOUR)
    for lines, top, height in zip(layout.row_lines, layout.row_tops, layout.row_heights):
        _draw_centred(draw, lines, (pad, top, layout.label_width - 2 * pad, height), size, LABEL_COLOUR)
    for row_index, row in enumerate(tiles):
        for column_index, tile in enumerate(row):
            if tile is None:
                continue
            left, top, width, height = layout.tile_box(row_index, column_index)
            image = to_rgb(tile)
            if image.width > width or image.height > height:
                image = ImageOps.contain(image, (width, height), Image.Resampling.LANCZOS)
            sheet.paste(image, (left + (width - image.width) // 2, top + (height - image.height) // 2))
    return sheet


def placeholder_tile(size: tuple[int, int], text: str, font_size: int | None = None) -> Image.Image:
    """A dark tile standing in for a cell that was not made, carrying the reason as wrapped text."""
    width, height = size
    tile = Image.new("RGB", size, PLACEHOLDER_FILL)
    font_size = font_size or max(8, min(MAX_FONT_SIZE, (width + height) // 30))
    font = label_font(font_size)
    pad = max(2, font_size // 3)
    lines = wrap_text(text, font, width - 2 * pad, max(1, (height - 2 * pad) // line_height(font_size)))
    draw = ImageDraw.Draw(tile)
    # An edge keeps neighbouring placeholders apart.
    draw.rectangle((0, 0, width - 1, height - 1), outline=PLACEHOLDER_EDGE)
    _draw_centred(draw, lines, (pad, pad, width - 2 * pad, height - 2 * pad), font_size, PLACEHOLDER_TEXT)
    return tile


@dataclass(frozen=True)
class SheetLayout:
    """Several grids (one per Z value) side by side or stacked, whichever is closer to square."""

    positions: tuple[tuple[int, int], ...]
    width: int
    height: int

    @property
    def size(self) -> tuple[int, int]:
        return self.width, self.height


def plan_sheet(sizes: Sequence[tuple[int, int]], gap: int) -> SheetLayout:
    if not sizes:
        raise ValueError("a sheet needs at least one grid")
    across = (sum(w for w, _ in sizes) + gap * (len(sizes) - 1), max(h for _, h in sizes))
    down = (max(w for w, _ in sizes), sum(h for _, h in sizes) + gap * (len(sizes) - 1))

    def squareness(size: tuple[int, int]) -> float:
        return max(size) / min(size)

    positions: list[tuple[int, int]] = []
    offset = 0
    if squareness(across) <= squareness(down):
        for w, _ in sizes:
            positions.append((offset, 0))
            offset += w + gap
        return SheetLayout(tuple(positions), *across)
    for _, h in sizes:
        positions.append((0, offset))
        offset += h + gap
    return SheetLayout(tuple(positions), *down)


def render_sheet(layout: SheetLayout, grids: Sequence[Image.Image]) -> Image.Image:
    sheet = Image.new("RGB", layout.size, BACKGROUND)
    for grid, position in zip(grids, layout.positions, strict=True):
        sheet.paste(to_rgb(grid), position)
    return sheet
