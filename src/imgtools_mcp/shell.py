"""`imgtools-mcp generate`: the server's own generate tool, called in-process, with a progress bar on stderr."""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
from pathlib import Path

import anyio

from .config import Settings


def check_arguments(arguments: dict[str, object]) -> str | None:
    """The generate tool's own request model, checked before torch and the engine are imported (seconds saved on a
    typo); the one line naming what is wrong, or None."""
    from pydantic import ValidationError

    from .params import GenerateRequest, one_line_error

    try:
        GenerateRequest.model_validate(arguments)
    except ValidationError as exc:
        return one_line_error(exc)
    return None


def quiet_progress_bars() -> None:
    """diffusers draws its load bars unless told not to (it reads no environment variable for it)."""
    from diffusers.utils import logging as diffusers_logging

    diffusers_logging.disable_progress_bar()


def tool_error_text(text: str, tool: str = "generate") -> str:
    """A tool error as a shell user reads it: without the MCP framing."""
    return text.removeprefix(f"Error executing tool {tool}: ")


def generate_from_shell(settings: Settings, args: argparse.Namespace) -> int:
    arguments = {
        "prompt": args.prompt,
        "negative_prompt": args.negative_prompt,
        "width": args.width,
        "height": args.height,
        "steps": args.steps,
        "guidance_scale": args.guidance_scale,
        "sampler": args.sampler,
        "seed": args.seed,
        "num_images": args.num_images,
    }
    arguments = {k: v for k, v in arguments.items() if v is not None}
    problem = check_arguments(arguments)
    if problem is not None:
        print(f"imgtools-mcp: {problem}", file=sys.stderr)
        return 2

    verbose = bool(getattr(args, "verbose", False))
    if not verbose:
        quiet_progress_bars()
    from mcp import Client

    from .server import build_server

    bar_drawn = False
    last_message: str | None = None
    status_head: str | None = None  # what the status line now shows, e.g. "loading tiny-sd15"
    status_width = 0

    async def progress(done: float, total: float | None, message: str | None) -> None:
        nonlocal bar_drawn, last_message, status_head, status_width
        if total and (message is None or message.startswith("step")):
            width = 30
            filled = int(width * min(done / total, 1.0))
            sys.stderr.write(("\n" if status_head else "") + f"\r[{'#' * filled}{'.' * (width - filled)}] {message or ''}   ")
            bar_drawn, status_head = True, None
        elif message and message != last_message:
            # Downloading, loading, converting: one status line per kind of work, redrawn as it goes, so minutes
            # of first-run work are not silent and the shell is not flooded.
            head, line = message.split(":", 1)[0], f"imgtools-mcp: {message}"
            if head == status_head:
                sys.stderr.write("\r" + line.ljust(status_width))  # padded over the longer line it replaces
            else:
                sys.stderr.write(("\n" if bar_drawn or status_head else "") + line)
            bar_drawn, status_head, status_width = False, head, len(line)
        last_message = message
        sys.stderr.flush()

    async def run() -> int:
        engine_log = logging.getLogger("imgtools_mcp")
        if not verbose:
            # Every failure comes back as the tool's result and is printed once, below; the engine's own
            # log lines for it (with tracebacks) are for -v.
            engine_log.setLevel(logging.CRITICAL)
        async with Client(build_server(settings)) as client:
            result = await client.call_tool("generate", arguments, progress_callback=progress)
        if bar_drawn or status_head:
            sys.stderr.write("\n")
        if result.is_error:
            print(f"imgtools-mcp: {tool_error_text(result.content[0].text)}", file=sys.stderr)
            return 1
        print(result.content[0].text)
        images = (result.structured_content or {}).get("images", [])
        for image in images:
            print(image["path"])
        if args.out and images:
            out: Path = args.out
            for index, image in enumerate(images):
                target = out if len(images) == 1 else out.with_name(f"{out.stem}-{index}{out.suffix}")
                shutil.copyfile(image["path"], target)
                print(f"copied to {target}")
        return 0

    return anyio.run(run)
