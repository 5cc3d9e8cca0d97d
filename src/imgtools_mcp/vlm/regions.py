"""Problem regions a critique names: cleaned (clipped to the grid, degenerate and whole-image boxes dropped),
measured, and turned into a repaint mask with grounding's box convention (0-1000 grid, [x1, y1, x2, y2])."""

from __future__ import annotations

from collections.abc import Sequence

from PIL import Image

from .grounding import GRID, GroundedObject, boxes_mask
from .schemas import ProblemRegion

MAX_REGIONS = 8
MIN_SIDE = 10  # grid units (1% of a side): a thinner box marks nothing a repair could fix
MAX_AREA = 0.9  # one box over 90% of the image is the whole image, not a region
OFF_GRID = 50  # values this far outside 0-1000 are not on the grid (pixels, say): the box is dropped, not clipped


def clean_regions(regions: Sequence[ProblemRegion]) -> list[ProblemRegion]:
    """The usable regions: corners put in order and clipped to the grid; boxes off the grid, thinner than
    MIN_SIDE or larger than MAX_AREA of the image dropped; at most MAX_REGIONS, in the critic's order."""
    kept: list[ProblemRegion] = []
    for region in regions:
        if any(not -OFF_GRID <= value <= GRID + OFF_GRID for value in region.bbox_2d):
            continue
        x1, y1, x2, y2 = (min(float(GRID), max(0.0, value)) for value in region.bbox_2d)
        x1, x2 = sorted((x1, x2))
        y1, y2 = sorted((y1, y2))
        if x2 - x1 < MIN_SIDE or y2 - y1 < MIN_SIDE or (x2 - x1) * (y2 - y1) > MAX_AREA * GRID * GRID:
            continue
        prompt = region.prompt.strip() if region.prompt and region.prompt.strip() else None
        kept.append(region.model_copy(update={"bbox_2d": [x1, y1, x2, y2], "prompt": prompt}))
        if len(kept) == MAX_REGIONS:
            break
    return kept


def union_fraction(regions: Sequence[ProblemRegion]) -> float:
    """The share of the image (0-1) the regions cover together, overlaps counted once."""
    boxes = [region.bbox_2d for region in regions]
    xs = sorted({x for box in boxes for x in (box[0], box[2])})
    area = 0.0
    for left, right in zip(xs, xs[1:]):
        spans = sorted((box[1], box[3]) for box in boxes if box[0] <= left and box[2] >= right)
        covered, reach = 0.0, None
        for top, bottom in spans:
            if reach is None or top > reach:
                covered += bottom - top
                reach = bottom
            elif bottom > reach:
                covered += bottom - reach
                reach = bottom
        area += (right - left) * covered
    return area / (GRID * GRID)


def regions_mask(size: tuple[int, int], regions: Sequence[ProblemRegion]) -> Image.Image:
    """White (repaint) inside every region's box, black elsewhere, at the image's `size`."""
    return boxes_mask(size, [GroundedObject(label=region.problem, bbox_2d=region.bbox_2d) for region in regions])
