"""The refine loop: each round generates candidates, critiques each, keeps the best, and asks for a revision."""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from typing import Any, Literal

import anyio
import anyio.to_thread
from PIL import Image
from pydantic import ValidationError

from ...engine.errors import EngineError, GenerationCancelled
from ...params import ImageInfo, one_line_error
from ...store import atomic_write
from ...vlm import Critique, CritiqueResult, VLMClient, VLMError, VLMUsage
from ..context import RunContext, RunFailed, RunInputError
from ..image_run import check, run_and_save
from ..inputs import ImageInputs
from ..progress import ProgressRelay
from ..vlm_messages import vlm_error_message
from .models import RefineBest, RefineCandidate, RefineResult, RefineRound
from .repair import Decision, Repair, decide, repair_inputs
from .state import Best, RefinePlan, RefineState, apply_revision

log = logging.getLogger(__name__)
_GENERATION_KEYS = ("prompt", "negative_prompt", "model", "width", "height", "steps", "guidance_scale", "sampler", "seed")


@dataclass
class RefineOutcome:
    result: RefineResult
    best: Best | None


async def _critique_all(
    vlm: VLMClient, goal: str, images: list[Image.Image], parameters: list[dict[str, Any]]
) -> list[CritiqueResult | VLMError]:
    """Every candidate's critique, concurrently; a failed one is returned as its error."""
    results: list[CritiqueResult | VLMError | None] = [None] * len(images)

    async def one(index: int) -> None:
        try:
            results[index] = await vlm.critique(images[index], goal, parameters[index])
        except VLMError as exc:
            results[index] = exc

    async with anyio.create_task_group() as group:
        for index in range(len(images)):
            group.start_soon(one, index)
    return [result for result in results if result is not None]


def _record_critique(ctx: RunContext, image_id: str, critique: Critique, refine_id: str) -> None:
    """Add the critique to the image's sidecar, so its metadata says how it scored."""
    try:
        metadata = ctx.store.read_metadata(image_id)
        metadata["critique"] = {"refine_id": refine_id, **critique.model_dump(mode="json")}
        atomic_write(ctx.store.sidecar_path(image_id), json.dumps(metadata, indent=2, default=str).encode())
    except (KeyError, OSError, ValueError) as exc:
        log.warning("could not add the critique to %s's sidecar: %s", image_id, exc)


def _history_entry(
    number: int, state: RefineState, used: dict[str, Any], critique: Critique, scores: list, decision: Decision
) -> dict[str, Any]:
    return {
        "round": number,
        "action": f"{decision.action} ({decision.reason})",
        "why_this_prompt": state.rationale or "the starting prompt",
        "prompt": used["prompt"],
        "negative_prompt": used["negative_prompt"],
        "parameters": {k: used[k] for k in ("steps", "guidance_scale", "sampler", "width", "height", "seed")},
        "score": critique.score,
        "candidate_scores": scores,
        "problems": critique.problems,
        "critic_suggestion": {
            "revised_prompt": critique.revised_prompt,
            "negative_prompt_additions": critique.negative_prompt_additions,
            "parameter_advice": critique.parameter_advice.model_dump(exclude_none=True),
        },
    }


def _decision(plan: RefinePlan, state: RefineState) -> Decision:
    """Whether the coming round regenerates or repairs the best image's regions, and why."""
    best = state.best
    last = state.rounds[-1] if state.rounds else None
    repeated = best is not None and last is not None and last.action == "repair" and last.source_id == best.stored.id
    return decide(
        plan.request.strategy, best.critique if best is not None else None,
        can_inpaint=plan.family.family.pipeline_for("inpaint") is not None, family=plan.family.family.id,
        repeated=repeated,
    )


async def _one_round(
    ctx: RunContext, plan: RefinePlan, state: RefineState, relay: ProgressRelay, number: int, decision: Decision
) -> None:
    request = plan.request
    label = f"round {number}/{request.max_rounds}"
    started = time.perf_counter()
    parent = state.best.stored.id if state.best is not None else None
    refine_meta = {"id": plan.refine_id, "round": number, "goal": request.goal, "action": decision.action}
    repair: Repair | None = None
    if decision.action == "repair" and state.best is not None:
        try:
            repair = await repair_inputs(ctx, plan, state.best, decision.regions, number)
        except (RunInputError, ValidationError) as exc:
            why = one_line_error(exc) if isinstance(exc, ValidationError) else str(exc)
            decision = Decision("regenerate", f"the repair could not run ({why}); regenerated")
            refine_meta["action"] = "regenerate"
    if repair is not None:
        params, inputs = repair.request, repair.inputs
        inputs.infotext["Refine round"] = f"{number}/{request.max_rounds} (repair)"
        inputs.metadata["refine"] = {**refine_meta, "regions": [region.model_dump() for region in decision.regions]}
    else:
        params = plan.current
        inputs = ImageInputs(
            mode="txt2img",
            infotext={"Refine round": f"{number}/{request.max_rounds}"},
            metadata={"parent": parent, "refine": refine_meta},
        )
    share = request.num_images * plan.first_steps
    relay.segment((number - 1) * share, share, f"{label}: ")
    try:
        made = await run_and_save(ctx, "refine", await check(ctx, params, inputs), inputs, relay)
    except GenerationCancelled:
        state.stop_reason = "cancelled"
        return
    except EngineError as exc:
        if state.best is None:
            raise
        state.stop_reason = "engine_error"
        state.warnings.append(f"round {number}: {exc}")
        return
    state.model, state.engine = made.result.model, made.result.engine
    used = made.result.parameters
    relay.post(number * share, f"{label}: critiquing {len(made.images)} candidate(s)")

    per_image = [{**{k: used[k] for k in _GENERATION_KEYS if k in used}, "seed": info.seed} for info in made.result.images]
    results = await _critique_all(plan.vlm, request.goal, made.images, per_image)
    round_usage = VLMUsage()
    candidates: list[RefineCandidate] = []
    errors: list[VLMError] = []
    round_best: tuple[float, int, Critique] | None = None
    for index, (info, result) in enumerate(zip(made.result.images, results, strict=True)):
        candidate = RefineCandidate(**info.model_dump())
        if isinstance(result, VLMError):
            errors.append(result)
            candidate.error = vlm_error_message(result)
            if result.usage is not None:
                round_usage += result.usage
        else:
            round_usage += result.usage
            critique = result.critique
            candidate.score, candidate.summary, candidate.problems = critique.score, critique.summary, critique.problems
            await anyio.to_thread.run_sync(_record_critique, ctx, info.id, critique, plan.refine_id)
            if round_best is None or critique.score > round_best[0]:
                round_best = (critique.score, index, critique)
            if state.best is None or critique.score > state.best.score:
                state.best = Best(critique.score, number, made.stored[index], made.images[index], info.seed, used["prompt"], critique)
        candidates.append(candidate)
    state.usage += round_usage
    state.rounds.append(
        RefineRound(
            round=number, prompt=used["prompt"], negative_prompt=used["negative_prompt"], parameters=used,
            candidates=candidates, best_score=round_best[0] if round_best else None,
            best_id=candidates[round_best[1]].id if round_best else None, usage=round_usage,
            seconds=round(time.perf_counter() - started, 3), action=decision.action, action_reason=decision.reason,
            regions=decision.regions if repair is not None else [],
            source_id=parent if repair is not None else None, mask_id=repair.mask.id if repair is not None else None,
        )
    )
    if round_best is not None:
        state.history.append(_history_entry(number, state, used, round_best[2], [c.score for c in candidates], decision))
    if errors:
        if state.best is None:
            kept = ", ".join(c.id for c in candidates)
            raise RunFailed(f"{vlm_error_message(errors[0])}; the round-{number} images are kept: {kept}")
        state.stop_reason = "vlm_error"
        state.warnings.append(f"round {number}: {vlm_error_message(errors[0])}")


def _over_budget(plan: RefinePlan, state: RefineState) -> bool:
    budget = plan.request.max_cost
    return budget is not None and state.usage.cost is not None and state.usage.cost >= budget


def _stop_after_round(plan: RefinePlan, state: RefineState, number: int) -> bool:
    request = plan.request
    if request.max_cost is not None and state.usage.cost is None and number == 1:
        state.warnings.append("max_cost: the VLM server reports no cost, so the budget cannot be enforced")
    if state.best is not None and state.best.score >= request.target_score:
        state.stop_reason = "target_score"
    elif number == request.max_rounds:
        state.stop_reason = "max_rounds"
    elif _over_budget(plan, state):
        state.stop_reason = "max_cost"
    return state.stop_reason is not None


async def _loop(ctx: RunContext, plan: RefinePlan, state: RefineState, relay: ProgressRelay) -> None:
    request = plan.request
    for number in range(1, request.max_rounds + 1):
        if ctx.stop.requested:
            state.stop_reason = "cancelled"
            return
        await _one_round(ctx, plan, state, relay, number, _decision(plan, state))
        if state.stop_reason is not None or _stop_after_round(plan, state, number):
            return
        relay.post(number * request.num_images * plan.first_steps, f"round {number}/{request.max_rounds}: revising the prompt")
        try:
            answer = await plan.vlm.revise(request.goal, state.history)
        except VLMError as exc:
            if exc.usage is not None:
                state.usage += exc.usage
                state.rounds[-1].usage += exc.usage
            state.stop_reason = "vlm_error"
            state.warnings.append(f"round {number} revision: {vlm_error_message(exc)}")
            return
        state.usage += answer.usage
        state.rounds[-1].usage += answer.usage
        plan.current, state.rounds[-1].revision = apply_revision(plan, answer.revision)
        state.rationale = answer.revision.rationale
        if _over_budget(plan, state):
            state.stop_reason = "max_cost"
            return


async def run_refine(ctx: RunContext, plan: RefinePlan) -> RefineOutcome:
    started = time.perf_counter()
    request = plan.request
    grand_total = float(request.max_rounds * request.num_images * plan.first_steps)
    state = RefineState()
    relay = ProgressRelay(ctx.sink, grand_total)
    failure: Exception | None = None
    async with relay.running():
        with anyio.CancelScope() as scope:
            ctx.stop.attach(scope)
            try:
                await _loop(ctx, plan, state, relay)
            except Exception as exc:  # raised below, outside the relay's task group, which would wrap it in a group
                failure = exc
        ctx.stop.attach(None)
        if failure is None:
            if scope.cancelled_caught or (ctx.stop.requested and state.stop_reason is None):
                state.stop_reason = "cancelled"
            # A cancelled loop ends where it stopped; one that finished (or reached its target early) ends the bar.
            final = relay.reported if state.stop_reason == "cancelled" else grand_total
            relay.post(final, f"done: {state.stop_reason}")
    if failure is not None:
        raise failure
    return _outcome(plan, state, "cancelled" if state.stop_reason == "cancelled" else "done", started)


def _outcome(plan: RefinePlan, state: RefineState, outcome: Literal["done", "cancelled"], started: float) -> RefineOutcome:
    best = state.best
    best_out = None
    if best is not None:
        best_out = RefineBest(
            **ImageInfo.of(best.stored, best.seed).model_dump(), round=best.round, score=best.score, prompt=best.prompt,
            critique=best.critique,
        )
    result = RefineResult(
        state=outcome,
        stop_reason=state.stop_reason,
        goal=plan.request.goal,
        best=best_out,
        rounds=state.rounds,
        usage=state.usage,
        model=state.model,
        engine=state.engine,
        timings={"total_s": round(time.perf_counter() - started, 3)},
        warnings=state.warnings,
    )
    return RefineOutcome(result, best)
