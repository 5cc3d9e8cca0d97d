"""Repair rounds: whether a round regenerates or inpaints only the regions the critic named, and the inpaint
inputs of a repair (the best image so far, its regions as a mask saved as an output, the region prompts)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import anyio.to_thread

from ...params import InpaintRequest
from ...store import StoredImage
from ...vlm import Critique, ProblemRegion
from ...vlm.regions import regions_mask, union_fraction
from ..context import RunContext
from ..inpaint_inputs import prepare_inpaint
from ..inputs import ImageInputs
from .models import Strategy
from .state import Best, RefinePlan

Action = Literal["regenerate", "repair"]
AUTO_MAX_COVERAGE = 0.4  # auto repairs only regions covering at most this share of the image
AUTO_MIN_SCORE = 5.0  # and only an image at least middling on the critic's 0-10 scale ("recognisable but flawed")


@dataclass(frozen=True)
class Decision:
    action: Action
    reason: str
    regions: list[ProblemRegion] = field(default_factory=list)


def decide(
    strategy: Strategy, critique: Critique | None, *, can_inpaint: bool, family: str, repeated: bool = False
) -> Decision:
    """What the coming round does with the best image so far and its critique (None before the first round).

    `can_inpaint`: the model's family has an inpaint pipeline; `repeated`: the last round already repaired
    this image's regions without beating its score (auto then regenerates, repair uses the revised prompt)."""
    if critique is None:
        return Decision("regenerate", "the first round generates from the prompt")
    if strategy == "regenerate":
        return Decision("regenerate", "strategy=regenerate")
    regions = critique.regions
    if not regions:
        return Decision("regenerate", f"strategy={strategy}: the critic named no local regions; regenerated")
    if not can_inpaint:
        return Decision("regenerate", f"the model's family ({family}) has no inpaint pipeline; regenerated instead of repairing")
    share = union_fraction(regions)
    where = f"{len(regions)} region(s) covering {share:.0%} of the image"
    if strategy == "repair":
        if repeated:  # the same image, regions and seed would repaint the same pixels: take the revised prompt
            unprompted = [region.model_copy(update={"prompt": None}) for region in regions]
            return Decision("repair", f"strategy=repair: {where}, again, with the revised prompt", unprompted)
        return Decision("repair", f"strategy=repair: {where}", regions)
    if share > AUTO_MAX_COVERAGE:
        return Decision("regenerate", f"auto: {where}, over {AUTO_MAX_COVERAGE:.0%}: the problems are not local")
    if critique.score < AUTO_MIN_SCORE:
        return Decision("regenerate", f"auto: score {critique.score:g} is under {AUTO_MIN_SCORE:g}: too far off to repair")
    if repeated:
        return Decision("regenerate", "auto: repairing these regions last round did not beat the score")
    return Decision("repair", f"auto: {where} and score {critique.score:g}: the problems are local", regions)


def repair_prompt(regions: list[ProblemRegion], revised: str) -> str:
    """The regions' own prompts (joined when several differ); the revised prompt stands in for a region without one."""
    prompts = list(dict.fromkeys(region.prompt for region in regions if region.prompt))
    if any(region.prompt is None for region in regions):
        prompts.append(revised)
    return ", ".join(dict.fromkeys(prompts))[:4000] or revised


@dataclass
class Repair:
    request: InpaintRequest
    inputs: ImageInputs
    mask: StoredImage


async def repair_inputs(ctx: RunContext, plan: RefinePlan, best: Best, regions: list[ProblemRegion], number: int) -> Repair:
    """Inpaint's inputs for a repair of `best`: its regions as a mask (saved as an output), everything outside kept.

    Raises RunInputError or ValidationError when inpaint refuses them; the round then regenerates."""
    mask = regions_mask(best.image.size, regions)
    boxes = [region.model_dump() for region in regions]
    metadata: dict[str, Any] = {"tool": "refine", "refine": {"id": plan.refine_id, "round": number}, "regions": boxes}
    stored = await anyio.to_thread.run_sync(
        lambda: ctx.store.save(mask.convert("RGB"), f"mask: refine round {number} regions", metadata)
    )
    current = plan.current.model_dump(exclude={"background"})
    request = InpaintRequest.model_validate(
        {**current, "prompt": repair_prompt(regions, plan.current.prompt), "image": best.stored.uri, "mask": stored.uri}
    )
    inputs = await prepare_inpaint(ctx, request, plan.family)
    inputs.parameters["mask_made"] = stored.id
    return Repair(request, inputs, stored)
