"""refine's state: the plan (parameters of the coming round), the best so far, the history the reviser sees,
and how a revision becomes the next round's parameters."""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from typing import Any

from PIL import Image
from pydantic import ValidationError

from ...engine.families import FamilyInfo
from ...engine.request import ProgressCallback
from ...params import GenerationParams, one_line_error
from ...store import StoredImage
from ...vlm import Critique, Revision, VLMClient, VLMUsage
from ..context import RunContext
from ..image_run import check, model_family
from ..inputs import ImageInputs
from .models import RefineRequest, RefineRevision, RefineRound, StopReason

# What the reviser may change; everything else (model, size, seed, LoRAs) stays as the caller set it.
REVISABLE = ("steps", "guidance_scale", "sampler")
TURBO_MAX_STEPS = 8


@dataclass
class RefinePlan:
    request: RefineRequest
    vlm: VLMClient
    family: FamilyInfo
    current: GenerationParams  # the coming round's parameters
    first_steps: int
    max_steps: int
    refine_id: str = field(default_factory=lambda: f"refine-{secrets.token_hex(4)}")


@dataclass
class Best:
    score: float
    round: int
    stored: StoredImage
    image: Image.Image
    seed: int
    prompt: str
    critique: Critique


@dataclass
class RefineState:
    rounds: list[RefineRound] = field(default_factory=list)
    history: list[dict[str, Any]] = field(default_factory=list)  # what the reviser sees
    best: Best | None = None
    usage: VLMUsage = field(default_factory=VLMUsage)
    stop_reason: StopReason | None = None
    warnings: list[str] = field(default_factory=list)
    model: dict[str, Any] = field(default_factory=dict)
    engine: dict[str, Any] = field(default_factory=dict)
    rationale: str | None = None  # why the coming round's prompt is what it is


def revised(params: GenerationParams, name: str, value: Any) -> GenerationParams:
    """`params` with one field changed, checked as the request was (raises ValidationError naming the field)."""
    copy = params.model_copy()
    type(params).__pydantic_validator__.validate_assignment(copy, name, value)
    return copy


def start_params(request: RefineRequest) -> GenerationParams:
    """The first round's request as generate takes it, checked without the model (before a job id is handed out)."""
    return GenerationParams.model_validate(
        {name: getattr(request, name) for name in GenerationParams.model_fields if name != "background"}
        | {"prompt": request.prompt or request.goal}
    )


async def plan_refine(
    ctx: RunContext, request: RefineRequest, vlm: VLMClient, on_progress: ProgressCallback | None = None
) -> RefinePlan:
    """Everything checked before any image is made; the first round's parameters made concrete.

    Resolving the model may download it (minutes), which `on_progress` hears: a background job does this itself.
    """
    start = start_params(request)
    family = await model_family(ctx, start.model, on_progress)
    used = (await check(ctx, start, ImageInputs(mode="txt2img"), on_progress)).used
    # Concrete values from here on, so a revision changes a number rather than a default, and every round
    # uses the same seeds: what differs between rounds is what the reviser changed.
    current = start.model_copy(update={key: used[key] for key in ("steps", "guidance_scale", "width", "height", "seed")})
    first_steps = used["steps"]
    max_steps = max(2, 2 * first_steps)
    if family.turbo:
        max_steps = min(TURBO_MAX_STEPS, max_steps)
    return RefinePlan(request, vlm, family, current, first_steps, max_steps)


def apply_revision(plan: RefinePlan, revision: Revision) -> tuple[GenerationParams, RefineRevision]:
    """The next round's parameters: the revision's prompts, and each proposed change that passes the request
    model's checks and this model's limits; what was not used is listed with the reason."""
    current = plan.current
    ignored: list[str] = []
    applied: dict[str, Any] = {}
    requested = {k: v for k, v in revision.parameter_changes.model_dump().items() if v is not None}

    for name, value in (("prompt", revision.prompt.strip()), ("negative_prompt", revision.negative_prompt.strip())):
        try:
            current = revised(current, name, value)
        except ValidationError as exc:
            ignored.append(f"{one_line_error(exc)}; kept the previous {name}")

    for name in REVISABLE:
        value = requested.get(name)
        if value is None or value == getattr(current, name):
            continue
        if name == "guidance_scale" and plan.family.turbo:
            ignored.append(f"guidance_scale={value:g}: a distilled (turbo) model runs without guidance")
            continue
        if name == "steps" and value > plan.max_steps:
            ignored.append(f"steps={value}: capped at {plan.max_steps} (twice the first round's, to bound the time)")
            value = plan.max_steps
            if value == current.steps:
                continue
        try:
            current = revised(current, name, value)
        except ValidationError as exc:
            ignored.append(f"{one_line_error(exc)}; not applied")
            continue
        applied[name] = value
    if requested.get("strength") is not None:
        ignored.append(f"strength={requested['strength']:g}: refine makes images from text; strength does not apply")
    info = RefineRevision(
        rationale=revision.rationale,
        prompt=current.prompt,
        negative_prompt=current.negative_prompt,
        requested=requested,
        applied=applied,
        ignored=ignored,
    )
    return current, info
