"""refine's request (a goal and the generation parameters to start from) and its result."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from ...params import GenerationParams, Goal, ImageInfo
from ...vlm import Critique, ProblemRegion, VLMUsage

Strategy = Literal["auto", "regenerate", "repair"]
StopReason = Literal["target_score", "max_rounds", "max_cost", "cancelled", "vlm_error", "engine_error"]


class RefineRequest(GenerationParams):
    """A goal and the generation parameters to start from."""

    model_config = ConfigDict(extra="forbid")

    goal: Goal
    prompt: str | None = Field(  # type: ignore[assignment]
        None, min_length=1, max_length=4000, description="First round's prompt; null: the goal"
    )
    num_images: int = Field(2, ge=1, le=8, description="Candidates per round")
    max_rounds: int = Field(3, ge=1, le=8, description="Most rounds")
    target_score: float = Field(
        8.0, ge=0.0, le=10.0, description="Stop once a score (0-10) reaches this"
    )
    max_cost: float | None = Field(
        None, gt=0, description="USD cap on VLM calls (provider must report cost)"
    )
    strategy: Strategy = Field(
        "auto",
        description="repair: inpaint the critic's problem regions of the best image; regenerate: new images; "
        "auto: repair when local (<=40% of the image, score>=5)",
    )
    background: bool = Field(False, description="Return a job id at once; poll get_job")


class RefineCandidate(ImageInfo):
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
    action: Literal["regenerate", "repair"] = Field(
        "regenerate", description="regenerate: new images from the prompt; repair: the critic's regions of source_id inpainted"
    )
    action_reason: str = ""
    regions: list[ProblemRegion] = Field(default_factory=list, description="The regions a repair repainted")
    source_id: str | None = Field(None, description="The image a repair started from")
    mask_id: str | None = Field(None, description="A repair's mask, saved as an output (white = repainted)")
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
