"""`imgtools-mcp generate`: the server's own generate tool, called in-process, with a progress bar on stderr."""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

import anyio

from .config import Settings


def generate_from_shell(settings: Settings, args: argparse.Namespace) -> int:
    from mcp import Client

    from .server import build_server

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

    async def progress(done: float, total: float | None, message: str | None) -> None:
        if total:
            width = 30
            filled = int(width * done / total)
            sys.stderr.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {message or ''}   ")
            sys.stderr.flush()

    async def run() -> int:
        async with Client(build_server(settings)) as client:
            result = await client.call_tool("generate", arguments, progress_callback=progress)
        sys.stderr.write("\n")
        if result.is_error:
            print(f"imgtools-mcp: {result.content[0].text}", file=sys.stderr)
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
