"""Typed VLM results (usage, text, critique, revision) and their strict JSON schemas for `response_format`."""

from __future__ import annotations

import copy
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

# The sampler short names of the public tool interface (SPEC "Generation parameters").
SamplerName = Literal["euler", "euler_a", "dpmpp_2m", "dpmpp_2m_karras", "ddim", "unipc", "lcm", "default"]


class VLMUsage(BaseModel):
    """Tokens and cost of one or more requests; `cost` is in USD and only set when the provider reports it."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost: float | None = None
    requests: int = 0

    def __add__(self, other: VLMUsage) -> VLMUsage:
        costs = [c for c in (self.cost, other.cost) if c is not None]
        return VLMUsage(
            prompt_tokens=self.prompt_tokens + other.prompt_tokens,
            completion_tokens=self.completion_tokens + other.completion_tokens,
            cost=sum(costs) if costs else None,
            requests=self.requests + other.requests,
        )


class VLMText(BaseModel):
    """A free-text answer (describe_image, describe_video)."""

    text: str
    model: str
    usage: VLMUsage


# Field order is deliberate: a model fills JSON in schema order, so it lists problems before it scores.
class ParameterAdvice(BaseModel):
    """Generation settings the VLM suggests changing; null means keep the current value."""

    model_config = ConfigDict(extra="forbid")

    steps: int | None = Field(default=None, ge=1, le=150)
    guidance_scale: float | None = Field(default=None, ge=0, le=30)
    sampler: SamplerName | None = None
    strength: float | None = Field(default=None, ge=0, le=1, description="img2img/inpaint strength")
    notes: str | None = None


class ProblemRegion(BaseModel):
    """Where one local problem is, so a repair can repaint just there (boxes as grounding gives them)."""

    model_config = ConfigDict(extra="forbid")

    problem: str = Field(description="what is wrong there")
    bbox_2d: list[float] = Field(min_length=4, max_length=4, description="[x1, y1, x2, y2], 0-1000 relative to the image")
    prompt: str | None = Field(default=None, description="what to paint there; null: the revised prompt")


class Critique(BaseModel):
    """Structured judgement of one image against the goal it was generated for."""

    model_config = ConfigDict(extra="forbid")

    summary: str = Field(description="one-sentence verdict")
    problems: list[str] = Field(description="concrete, visible problems, most important first")
    regions: list[ProblemRegion] = Field(
        default_factory=list, description="boxes of the local problems; empty when they are global"
    )
    prompt_adherence: float = Field(ge=0, le=10)
    visual_quality: float = Field(ge=0, le=10)
    score: float = Field(ge=0, le=10, description="overall, 10 = fully meets the goal")
    revised_prompt: str
    negative_prompt_additions: list[str]
    parameter_advice: ParameterAdvice

    @field_validator("negative_prompt_additions", mode="before")
    @classmethod
    def _split_comma_string(cls, value: Any) -> Any:
        # Non-strict servers sometimes return the negative prompt as one comma-separated string.
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("regions")
    @classmethod
    def _clean_regions(cls, regions: list[ProblemRegion]) -> list[ProblemRegion]:
        from .regions import clean_regions  # regions uses grounding, which imports this module

        return clean_regions(regions)


class Revision(BaseModel):
    """The next prompt and settings to try, chosen with the history of earlier rounds in view."""

    model_config = ConfigDict(extra="forbid")

    rationale: str = Field(description="what changes from the previous rounds and why")
    prompt: str
    negative_prompt: str
    parameter_changes: ParameterAdvice


class CritiqueResult(BaseModel):
    critique: Critique
    model: str
    usage: VLMUsage


class RevisionResult(BaseModel):
    revision: Revision
    model: str
    usage: VLMUsage


def strict_json_schema(model: type[BaseModel]) -> dict[str, Any]:
    """The model's JSON schema in the form OpenAI "strict" structured outputs accept.

    Strict mode wants every object closed (`additionalProperties: false`) with every property
    required (optional ones are nullable instead). `$ref`s are inlined because a flat schema is
    the form most servers (OpenRouter providers, vLLM, llama.cpp grammars) handle.
    """
    schema = model.model_json_schema()
    definitions = schema.pop("$defs", {})

    def resolve(node: Any) -> Any:
        if isinstance(node, list):
            return [resolve(item) for item in node]
        if not isinstance(node, dict):
            return node
        if "$ref" in node:
            return resolve(copy.deepcopy(definitions[node["$ref"].rsplit("/", 1)[-1]]))
        # `properties` maps field names to schemas: resolve the schemas, never drop a field name.
        resolved = {key: resolve(value) for key, value in node.items() if key not in ("title", "default", "properties")}
        if "properties" in node:
            resolved["properties"] = {name: resolve(sub) for name, sub in node["properties"].items()}
        node = resolved
        if node.get("type") == "object" and "properties" in node:
            node["additionalProperties"] = False
            node["required"] = list(node["properties"])
        return node

    return resolve(schema)
