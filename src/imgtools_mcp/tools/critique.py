"""The `critique` tool: the VLM judges an image against the goal it was made for, as a strict art director."""

from __future__ import annotations

from typing import Any, Literal

from mcp.server.mcpserver import Context, MCPServer
from mcp_types import CallToolResult, TextContent, ToolAnnotations
from pydantic import BaseModel, ConfigDict, Field

from ..app import AppContext
from ..params import IMAGE_REFERENCE, Goal
from ..vlm import Critique, VLMUsage
from .present import app_of, bind_tool
from .vision import VLM_ANNOTATIONS, InputImage, input_image
from .vision_common import require_vlm, usage_text, wait_progress


class CritiqueRequest(BaseModel):
    """An image and the goal it was made for."""

    model_config = ConfigDict(extra="forbid")

    image: str = Field(min_length=1, description=f"Image: {IMAGE_REFERENCE}")
    goal: Goal
    parameters: dict[str, Any] | None = Field(
        None,
        description="Parameters it was made with; null: an output's own",
    )


class CritiqueResultOut(BaseModel):
    """critique's structured result."""

    critique: Critique
    model: str = Field(description="The VLM that answered")
    usage: VLMUsage = Field(description="Tokens (and cost in USD when the provider reports it)")
    image: InputImage
    goal: str
    parameters: dict[str, Any] | None = Field(None, description="The generation parameters the critic was shown")
    parameters_source: Literal["request", "sidecar", "none"]


async def critique(request: CritiqueRequest, ctx: Context) -> CallToolResult:
    app = app_of(ctx)
    vlm = require_vlm(app)
    resolved = await app.resolver.resolve(request.image, param="image")
    parameters, source = request.parameters, "request"
    if parameters is None and resolved.output_id is not None:
        parameters, source = sidecar_parameters(app, resolved.output_id), "sidecar"
    if parameters is None:
        source = "none"
    result = await vlm.critique(resolved.image, request.goal, parameters, on_wait=wait_progress(ctx))
    structured = CritiqueResultOut(
        critique=result.critique,
        model=result.model,
        usage=result.usage,
        image=input_image(resolved),
        goal=request.goal,
        parameters=parameters,
        parameters_source=source,
    )
    return CallToolResult(
        content=[TextContent(type="text", text=critique_text(result.critique) + f" ({result.model}; {usage_text(result.usage)})")],
        structured_content=structured.model_dump(mode="json"),
    )


def sidecar_parameters(app: AppContext, output_id: str) -> dict[str, Any] | None:
    """The parameters an output was made with, as its sidecar records them (None when it has none)."""
    try:
        metadata = app.store.read_metadata(output_id)
    except (KeyError, OSError, ValueError):
        return None
    parameters = metadata.get("parameters")
    return parameters if isinstance(parameters, dict) else None


def critique_text(critique: Critique) -> str:
    text = f"score {critique.score:g}/10 (adherence {critique.prompt_adherence:g}, quality {critique.visual_quality:g}): {critique.summary}"
    if critique.problems:
        text += " Problems: " + "; ".join(critique.problems) + "."
    if critique.regions:
        boxes = "; ".join(f"{r.problem} [{', '.join(f'{v:g}' for v in r.bbox_2d)}]" for r in critique.regions)
        text += f" Regions (0-1000 grid): {boxes}."
    text += f" Revised prompt: {critique.revised_prompt}"
    if critique.negative_prompt_additions:
        text += f" | add to negative: {', '.join(critique.negative_prompt_additions)}"
    advice = {k: v for k, v in critique.parameter_advice.model_dump().items() if v is not None}
    if advice:
        text += " | parameters: " + ", ".join(f"{k}={v}" for k, v in advice.items())
    return text


CRITIQUE = """Judge an image against its goal as a strict art director: score 0-10, problems (worst first), a revised
prompt, negative-prompt additions and parameter advice. One VLM call; refine automates generate -> critique -> revise."""


def register(server: MCPServer) -> None:
    bind_tool(
        server, CritiqueRequest, critique, name="critique", title="Critique image",
        description=CRITIQUE, output_model=CritiqueResultOut,
        annotations=ToolAnnotations(title="Critique image", **VLM_ANNOTATIONS),
    )
