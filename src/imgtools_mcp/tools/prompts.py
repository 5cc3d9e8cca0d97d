"""MCP prompts: ready-made requests (art-direct an image, explore a look, describe a video) from prompts/ templates."""

from __future__ import annotations

from typing import Annotated, Any

from mcp.server.mcpserver import MCPServer
from mcp.shared.exceptions import MCPError
from mcp_types import INVALID_PARAMS
from pydantic import Field

from ..vlm import render_prompt


def settings_text(**settings: str | None) -> str:
    """The optional arguments a user gave, as one line of settings for the assistant to pass on."""
    given = {name: value.strip() for name, value in settings.items() if value is not None and value.strip()}
    if not given:
        return "No settings given: use the tools' defaults."
    return "Settings to use: " + ", ".join(f"{name}={value}" for name, value in given.items()) + "."


async def check_prompt_request(server: MCPServer, name: str, arguments: dict[str, Any] | None) -> None:
    """Refuse an unknown prompt or a missing required argument as invalid params (-32602), naming what is allowed,
    before the SDK would turn either into a generic error with a server traceback."""
    prompts = {prompt.name: prompt for prompt in await server.list_prompts()}
    prompt = prompts.get(name)
    if prompt is None:
        raise MCPError(INVALID_PARAMS, f"unknown prompt {name!r}; prompts: {', '.join(sorted(prompts))}")
    given = arguments or {}
    declared = prompt.arguments or []
    missing = [argument.name for argument in declared if argument.required and not str(given.get(argument.name) or "").strip()]
    if missing:
        raise MCPError(INVALID_PARAMS, f"prompt {name!r}: missing required argument(s) {', '.join(missing)}")
    unknown = sorted(set(given) - {argument.name for argument in declared})
    if unknown:
        allowed = ", ".join(argument.name for argument in declared)
        raise MCPError(INVALID_PARAMS, f"prompt {name!r}: unknown argument(s) {', '.join(unknown)}; allowed: {allowed}")


def register(server: MCPServer) -> None:
    @server.prompt(name="art_direct", title="Art-direct an image")
    def art_direct(
        goal: Annotated[str, Field(description="What the image should show, as you would brief an artist")],
        model: Annotated[str | None, Field(description="Model to use (HF id, folder or .safetensors); default: the server's")] = None,
        max_rounds: Annotated[str | None, Field(description="Most refine rounds, 1-8 (default 3)")] = None,
        target_score: Annotated[str | None, Field(description="Critique score 0-10 to stop at (default 8)")] = None,
    ) -> str:
        """Generate -> critique -> revise toward a goal with `refine`, then explain each round and offer local fixes."""
        settings = settings_text(model=model, max_rounds=max_rounds, target_score=target_score)
        return render_prompt("art_direct", goal=goal.strip(), settings=settings)

    @server.prompt(name="explore_look", title="Explore a look")
    def explore_look(
        description: Annotated[str, Field(description="The look: subject, style, mood, palette, lighting")],
        model: Annotated[str | None, Field(description="Model to use; default: the server's")] = None,
    ) -> str:
        """Turn a description of a look into a prompt, sweep the settings that shape it, and pick from the grid."""
        return render_prompt("explore_look", description=description.strip(), settings=settings_text(model=model))

    @server.prompt(name="describe_this_video", title="Describe this video")
    def describe_this_video(
        video: Annotated[str, Field(description="File path under the input roots, data: URL or http(s) URL of the video")],
        question: Annotated[str | None, Field(description="What to find out; default: what happens, with timestamps")] = None,
    ) -> str:
        """Sample the video's frames with `describe_video` and answer with timestamps."""
        clause = f" and `question` set to: {question.strip()}" if question and question.strip() else ""
        return render_prompt("describe_this_video", video=video.strip(), question_clause=clause)
