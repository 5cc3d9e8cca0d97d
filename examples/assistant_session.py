"""What an assistant in an MCP host does with imgtools: generate, edit the result by id, inpaint by URI.

Run it against your own server configuration (it starts the server over stdio, as a host would):

    python examples/assistant_session.py --model stabilityai/sd-turbo

Each step prints the tool call and the text line the assistant reads back.
"""

from __future__ import annotations

import argparse
import os
import sys

import anyio
from mcp import Client, StdioServerParameters


async def call(client: Client, tool: str, arguments: dict) -> dict:
    print(f"> {tool} {arguments}")
    result = await client.call_tool(tool, arguments)
    print(f"< {result.content[0].text}")
    if result.is_error:
        raise SystemExit(f"{tool} failed")
    return result.structured_content


async def session(model: str | None, size: int, steps: int) -> None:
    env = dict(os.environ)
    if model:
        env["IMGTOOLS_MODEL"] = model
    server = StdioServerParameters(command=sys.executable, args=["-m", "imgtools_mcp.cli", "serve"], env=env)
    async with Client(server) as client:
        tools = [tool.name for tool in (await client.list_tools()).tools]
        print(f"tools: {', '.join(tools)}")
        small = {"width": size, "height": size, "steps": steps}
        first = await call(client, "generate", {"prompt": "a lighthouse on a cliff at dusk", "seed": 1234, **small})
        image_id = first["images"][0]["id"]
        # The assistant passes the id back to keep working on the same picture.
        edited = await call(client, "edit", {"image": image_id, "prompt": "a lighthouse on a cliff at night, stars",
                                             "strength": 0.5, "seed": 1234, "steps": steps})
        uri = edited["images"][0]["uri"]
        # It cannot draw a mask, so it describes one: the top third of the picture.
        await call(client, "inpaint", {"image": uri, "prompt": "a sky full of aurora",
                                       "mask_shapes": [{"type": "rect", "x": 0, "y": 0, "width": 1, "height": 0.33}],
                                       "seed": 1234, "steps": steps})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="model for this session (default: IMGTOOLS_MODEL)")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--steps", type=int, default=4)
    args = parser.parse_args()
    anyio.run(session, args.model, args.size, args.steps)


if __name__ == "__main__":
    main()
