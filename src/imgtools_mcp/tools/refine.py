"""The `refine` tool: generate candidates, critique each, revise the prompt with the history in view, repeat."""

from __future__ import annotations

import json
import logging
import secrets
import time
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Literal

import anyio
import anyio.from_thread
import anyio.to_thread
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp_types import CallToolResult, ToolAnnotations
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ..app import AppContext
from ..engine.errors import EngineError, GenerationCancelled
from ..engine.families import FamilyInfo
from ..jobs import ProgressSink, StopSwitch
from ..params import GenerationParams, ImageInfo, one_line_error
from ..store import StoredImage, atomic_write
from ..vlm import Critique, CritiqueResult, Revision, VLMClient, VLMError, VLMUsage
from .common import StepRelay, app_of, bind_tool, image_blocks, result_of, run_here_or_as_job
from .generation import ImageInputs, plan_job, run_and_save
from .vision_common import require_vlm, usage_text, vlm_error_message

log = logging.getLogger(__name__)

StopReason = Literal["target_score", "max_rounds", "max_cost", "cancelled", "vlm_error", "engine_error"]
# What the reviser may change; everything else (model, size, seed, LoRAs) stays as the caller set it.
REVISABLE = ("steps", "guidance_scale", "sampler")
TURBO_MAX_STEPS = 8


# ----- request and result models -----


class RefineRequest(GenerationParams):
    """A goal and the generation parameters to start from."""

    model_config = ConfigDict(extra="forbid")

    goal: str = Field(
        min_length=1, max_length=4000, description="What the image should show; every candidate is critiqued against it"
    )
    prompt: str | None = Field(  # type: ignore[assignment]
        None, min_length=1, max_length=4000, description="The first round's prompt; default: the goal itself"
    )
    num_images: int = Field(2, ge=1, le=8, description="Candidates per round (1-8), each critiqued; the best is kept")
    max_rounds: int = Field(3, ge=1, le=8, description="Most generate -> critique -> revise rounds (1-8)")
    target_score: float = Field(
        8.0, ge=0.0, le=10.0, description="Stop as soon as a candidate's critique score (0-10) reaches this"
    )
    max_cost: float | None = Field(
        None, gt=0, description="Budget in USD for VLM calls; stop once their summed cost reaches it (needs a provider that "
        "reports cost, like OpenRouter)",
    )
    background: bool = Field(False, description="Return a job id at once; poll get_job for progress and the result")


class RefineCandidate(BaseModel):
    id: str
    uri: str
    path: str
    width: int
    height: int
    seed: int
    score: float | None = Field(None, description="The critic's 0-10 score; null when the critique failed")
    summary: str | None = None
    problems: list[str] = Field(default_factory=list)
    error: str | None = None


class RefineRevision(BaseModel):
    rationale: str
    prompt: str
    negative_prompt: str
    requested: dict[str, Any] = Field(description="Parameter changes the VLM proposed")
    applied: dict[str, Any] = Field(description="Parameter changes used for the next round")
    ignored: list[str] = Field(default_factory=list, description="Proposals not used as given, and why")


class RefineRound(BaseModel):
    round: int
    prompt: str
    negative_prompt: str
    parameters: dict[str, Any] = Field(description="Parameters actually used, after defaults")
    candidates: list[RefineCandidate]
    best_score: float | None = None
    best_id: str | None = None
    revision: RefineRevision | None = Field(None, description="What the VLM changed for the next round, and why")
    usage: VLMUsage
    seconds: float = 0.0


class RefineBest(ImageInfo):
    round: int
    score: float
    prompt: str
    critique: Critique


class RefineResult(BaseModel):
    """refine's structured result: the best image, every round, and what the VLM calls cost."""

    state: Literal["done", "cancelled", "started"]
    stop_reason: StopReason | None = None
    goal: str
    best: RefineBest | None = None
    rounds: list[RefineRound] = Field(default_factory=list)
    usage: VLMUsage = Field(default_factory=VLMUsage, description="All VLM calls: tokens and cost (USD) when reported")
    model: dict[str, Any] = Field(default_factory=dict)
    engine: dict[str, Any] = Field(default_factory=dict)
    timings: dict[str, float] = Field(default_factory=dict)
    warnings: list[str] = Field(default_factory=list)
    job_id: str | None = Field(None, description="Set when background=true: poll get_job with it")


# ----- the loop -----


class RoundRelay(StepRelay):
    """One progress bar over all rounds: each round's denoising fills its share, whatever steps it ends up with."""

    def __init__(self, sink: ProgressSink | None, grand_total: float) -> None:
        super().__init__(sink, grand_total)
        self.share = 0.0
        self.label = ""

    def on_step(self, step: int, total: int) -> None:
        progress = self.offset + self.share * min(step, total) / max(total, 1)
        anyio.from_thread.run_sync(self.say, progress, f"{self.label}: step {step} / {total}")

    def say(self, progress: float, message: str) -> None:
        """Queue a progress message from the event loop, in order behind the steps already sent."""
        try:
            self._send.send_nowait((progress, self.grand_total, message))
        except (anyio.WouldBlock, anyio.BrokenResourceError, anyio.ClosedResourceError):
            pass  # progress is advisory


@dataclass
class RefinePlan:
    request: RefineRequest
    vlm: VLMClient
    family: FamilyInfo
    current: dict[str, Any]  # GenerationParams fields for the next round
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


def _params(current: dict[str, Any]) -> GenerationParams:
    return GenerationParams.model_validate({**current, "background": False})


async def plan_refine(app: AppContext, request: RefineRequest) -> RefinePlan:
    """Check everything that can be checked before any image is made (the VLM key first)."""
    vlm = require_vlm(app)
    await app.engine.aresolve(request.model)
    current = request.model_dump(exclude={"goal", "max_rounds", "target_score", "max_cost", "background"})
    current["prompt"] = request.prompt or request.goal
    planned = plan_job(app, _params(current), ImageInputs(mode="txt2img"))
    used = planned.used
    # Concrete values from here on, so a revision changes a number rather than a default, and every round
    # uses the same seeds: what differs between rounds is what the reviser changed.
    current.update(steps=used["steps"], guidance_scale=used["guidance_scale"], width=used["width"],
                   height=used["height"], seed=used["seed"])
    first_steps = used["steps"]
    max_steps = min(TURBO_MAX_STEPS, max(2, 2 * first_steps)) if planned.family.turbo else max(2, 2 * first_steps)
    return RefinePlan(request, vlm, planned.family, current, first_steps, max_steps)


def _generation_parameters(used: dict[str, Any]) -> dict[str, Any]:
    keys = ("prompt", "negative_prompt", "model", "width", "height", "steps", "guidance_scale", "sampler", "seed")
    return {key: used[key] for key in keys if key in used}


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


def _record_critique(app: AppContext, image_id: str, critique: Critique, refine_id: str) -> None:
    """Add the critique to the image's sidecar, so its metadata says how it scored."""
    try:
        metadata = app.store.read_metadata(image_id)
        metadata["critique"] = {"refine_id": refine_id, **critique.model_dump(mode="json")}
        atomic_write(app.store.sidecar_path(image_id), json.dumps(metadata, indent=2, default=str).encode())
    except (KeyError, OSError, ValueError) as exc:
        log.warning("could not add the critique to %s's sidecar: %s", image_id, exc)


def apply_revision(plan: RefinePlan, revision: Revision) -> tuple[dict[str, Any], RefineRevision]:
    """The next round's parameters: the revision's prompts, and each proposed change that passes the request
    model's checks and this model's limits; what was not used is listed with the reason."""
    current = dict(plan.current)
    ignored: list[str] = []
    applied: dict[str, Any] = {}
    requested = {k: v for k, v in revision.parameter_changes.model_dump().items() if v is not None}

    for name, value in (("prompt", revision.prompt.strip()), ("negative_prompt", revision.negative_prompt.strip())):
        try:
            _params({**current, name: value})
        except ValidationError as exc:
            ignored.append(f"{one_line_error(exc)}; kept the previous {name}")
            continue
        current[name] = value

    for name in REVISABLE:
        value = requested.get(name)
        if value is None or value == current.get(name):
            continue
        if name == "guidance_scale" and plan.family.turbo:
            ignored.append(f"guidance_scale={value:g}: a distilled (turbo) model runs without guidance")
            continue
        if name == "steps" and value > plan.max_steps:
            ignored.append(f"steps={value}: capped at {plan.max_steps} (twice the first round's, to bound the time)")
            value = plan.max_steps
            if value == current.get(name):
                continue
        try:
            _params({**current, name: value})
        except ValidationError as exc:
            ignored.append(f"{one_line_error(exc)}; not applied")
            continue
        current[name] = value
        applied[name] = value
    if requested.get("strength") is not None:
        ignored.append(f"strength={requested['strength']:g}: refine makes images from text; strength does not apply")
    info = RefineRevision(
        rationale=revision.rationale,
        prompt=current["prompt"],
        negative_prompt=current["negative_prompt"],
        requested=requested,
        applied=applied,
        ignored=ignored,
    )
    return current, info


async def _one_round(app: AppContext, plan: RefinePlan, state: RefineState, relay: RoundRelay, number: int) -> None:
    request = plan.request
    label = f"round {number}/{request.max_rounds}"
    started = time.perf_counter()
    parent = state.best.stored.id if state.best is not None else None
    inputs = ImageInputs(
        mode="txt2img",
        infotext={"Refine round": f"{number}/{request.max_rounds}"},
        metadata={"parent": parent, "refine": {"id": plan.refine_id, "round": number, "goal": request.goal}},
    )
    planned = plan_job(app, _params(plan.current), inputs)
    relay.offset = (number - 1) * request.num_images * plan.first_steps
    relay.share = request.num_images * plan.first_steps
    relay.label = label
    try:
        produced = await run_and_save(app, "refine", planned, inputs, relay)
    except GenerationCancelled:
        state.stop_reason = "cancelled"
        return
    except EngineError as exc:
        if state.best is None:
            raise
        state.stop_reason = "engine_error"
        state.warnings.append(f"round {number}: {exc}")
        return
    state.model, state.engine = produced.result.model, produced.result.engine
    used = produced.result.parameters
    relay.say(number * request.num_images * plan.first_steps, f"{label}: critiquing {len(produced.images)} candidate(s)")

    per_image = [{**_generation_parameters(used), "seed": info.seed} for info in produced.result.images]
    results = await _critique_all(plan.vlm, request.goal, produced.images, per_image)
    round_usage = VLMUsage()
    candidates: list[RefineCandidate] = []
    errors: list[VLMError] = []
    round_best: tuple[float, int] | None = None
    for index, (info, result) in enumerate(zip(produced.result.images, results, strict=True)):
        candidate = RefineCandidate(
            id=info.id, uri=info.uri, path=info.path, width=info.width, height=info.height, seed=info.seed
        )
        if isinstance(result, VLMError):
            errors.append(result)
            candidate.error = vlm_error_message(result)
            if result.usage is not None:
                round_usage += result.usage
        else:
            round_usage += result.usage
            critique = result.critique
            candidate.score, candidate.summary, candidate.problems = critique.score, critique.summary, critique.problems
            await anyio.to_thread.run_sync(_record_critique, app, info.id, critique, plan.refine_id)
            if round_best is None or critique.score > round_best[0]:
                round_best = (critique.score, index)
            if state.best is None or critique.score > state.best.score:
                state.best = Best(
                    critique.score, number, produced.stored[index], produced.images[index], info.seed, used["prompt"], critique
                )
        candidates.append(candidate)
    state.usage += round_usage
    record = RefineRound(
        round=number,
        prompt=used["prompt"],
        negative_prompt=used["negative_prompt"],
        parameters=used,
        candidates=candidates,
        best_score=round_best[0] if round_best else None,
        best_id=candidates[round_best[1]].id if round_best else None,
        usage=round_usage,
    )
    state.rounds.append(record)
    if round_best is not None:
        critique = results[round_best[1]].critique  # type: ignore[union-attr]
        state.history.append(
            {
                "round": number,
                "why_this_prompt": state.rationale or "the starting prompt",
                "prompt": used["prompt"],
                "negative_prompt": used["negative_prompt"],
                "parameters": {k: used[k] for k in ("steps", "guidance_scale", "sampler", "width", "height", "seed")},
                "score": critique.score,
                "candidate_scores": [c.score for c in candidates],
                "problems": critique.problems,
                "critic_suggestion": {
                    "revised_prompt": critique.revised_prompt,
                    "negative_prompt_additions": critique.negative_prompt_additions,
                    "parameter_advice": critique.parameter_advice.model_dump(exclude_none=True),
                },
            }
        )
    record.seconds = round(time.perf_counter() - started, 3)
    if errors:
        if state.best is None:
            kept = ", ".join(c.id for c in candidates)
            raise ToolError(f"{vlm_error_message(errors[0])}; the round-{number} images are kept: {kept}")
        state.stop_reason = "vlm_error"
        state.warnings.append(f"round {number}: {vlm_error_message(errors[0])}")


def _over_budget(plan: RefinePlan, state: RefineState) -> bool:
    budget = plan.request.max_cost
    return budget is not None and state.usage.cost is not None and state.usage.cost >= budget


async def _loop(app: AppContext, plan: RefinePlan, state: RefineState, relay: RoundRelay, stop: StopSwitch) -> None:
    request = plan.request
    for number in range(1, request.max_rounds + 1):
        if stop.requested:
            state.stop_reason = "cancelled"
            return
        await _one_round(app, plan, state, relay, number)
        if state.stop_reason is not None:
            return
        if request.max_cost is not None and state.usage.cost is None and number == 1:
            state.warnings.append("max_cost: the VLM server reports no cost, so the budget cannot be enforced")
        best = state.best
        if best is not None and best.score >= request.target_score:
            state.stop_reason = "target_score"
            return
        if number == request.max_rounds:
            state.stop_reason = "max_rounds"
            return
        if _over_budget(plan, state):
            state.stop_reason = "max_cost"
            return
        label = f"round {number}/{request.max_rounds}"
        relay.say(number * request.num_images * plan.first_steps, f"{label}: revising the prompt")
        try:
            result = await plan.vlm.revise(request.goal, state.history)
        except VLMError as exc:
            if exc.usage is not None:
                state.usage += exc.usage
                state.rounds[-1].usage += exc.usage
            state.stop_reason = "vlm_error"
            state.warnings.append(f"round {number} revision: {vlm_error_message(exc)}")
            return
        state.usage += result.usage
        state.rounds[-1].usage += result.usage
        plan.current, state.rounds[-1].revision = apply_revision(plan, result.revision)
        state.rationale = result.revision.rationale
        if _over_budget(plan, state):
            state.stop_reason = "max_cost"
            return


async def run_refine(app: AppContext, plan: RefinePlan, sink: ProgressSink | None, stop: StopSwitch) -> CallToolResult:
    started = time.perf_counter()
    request = plan.request
    grand_total = float(request.max_rounds * request.num_images * plan.first_steps)
    state = RefineState()
    relay = RoundRelay(sink, grand_total)
    failure: Exception | None = None
    async with relay.running():
        with anyio.CancelScope() as scope:
            stop.attach(scope)
            try:
                await _loop(app, plan, state, relay, stop)
            except Exception as exc:  # raised below, outside the relay's task group, which would wrap it in a group
                failure = exc
        stop.attach(None)
        if failure is None:
            if scope.cancelled_caught or (stop.requested and state.stop_reason is None):
                state.stop_reason = "cancelled"
            relay.say(grand_total, f"done: {state.stop_reason}")
    if failure is not None:
        raise failure
    return _result(plan, state, "cancelled" if state.stop_reason == "cancelled" else "done", started)


def _result(plan: RefinePlan, state: RefineState, outcome: Literal["done", "cancelled"], started: float) -> CallToolResult:
    best = state.best
    best_out = None
    if best is not None:
        stored = best.stored
        best_out = RefineBest(
            id=stored.id, uri=stored.uri, metadata_uri=stored.metadata_uri, path=str(stored.path), width=stored.width,
            height=stored.height, seed=best.seed, round=best.round, score=best.score, prompt=best.prompt,
            critique=best.critique,
        )
    structured = RefineResult(
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
    scores = " -> ".join(f"{r.best_score:g}" if r.best_score is not None else "-" for r in state.rounds)
    if best is None:
        text = f"refine: {outcome} ({state.stop_reason}) after {len(state.rounds)} round(s) with no scored image"
        blocks: list[Any] = []
    else:
        text = (
            f"refine: best {best.stored.id} scored {best.score:g}/10 (round {best.round}); best score by round {scores}; "
            f"stopped: {state.stop_reason}; {usage_text(state.usage)}. Critic: {best.critique.summary}"
        )
        blocks = image_blocks([best.stored], [best.image])
    if state.warnings:
        text += " — " + "; ".join(state.warnings)
    return result_of(text, blocks, structured)


DESCRIPTION = """Art-direct an image toward a goal without a human in the loop. Each round makes num_images candidates
(real outputs), has the vision-language model critique each against the goal (score 0-10),
keeps the best so far, then asks the VLM for a revised prompt/negative prompt/parameters that fix the most important
remaining problem, seeing every earlier round so it does not repeat itself. Stops at target_score, max_rounds, max_cost
(USD) or cancellation. The seed is fixed across rounds, so rounds differ by what the VLM changed; model, size and
LoRAs stay as given; steps may at most double. Returns the best image and the per-round history (prompts, parameters,
image ids, scores, problems, revision rationale) and the VLM tokens/cost. background=true returns a job id;
cancel_job keeps the best so far. Cost per round: num_images generations and critiques plus one revision call."""


async def handle(request: RefineRequest, ctx: Context) -> CallToolResult:
    app = app_of(ctx)
    plan = await plan_refine(app, request)

    def started(job_id: str) -> CallToolResult:
        ticket = RefineResult(state="started", goal=request.goal, job_id=job_id)
        text = f"refine: started job {job_id} (up to {request.max_rounds} rounds); poll get_job for progress and the result"
        return result_of(text, [], ticket)

    return await run_here_or_as_job(app, ctx, "refine", request.background, partial(run_refine, app, plan), started)


def register(server: MCPServer) -> None:
    bind_tool(
        server,
        RefineRequest,
        handle,
        name="refine",
        title="Refine toward a goal",
        description=DESCRIPTION,
        output_model=RefineResult,
        annotations=ToolAnnotations(
            title="Refine toward a goal", read_only_hint=False, destructive_hint=False, idempotent_hint=False,
            open_world_hint=True,
        ),
    )
