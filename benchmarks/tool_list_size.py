"""What the tool list costs a host's context: tokens per tool and per schema part, as tools/list returns it.

Measured like tests/test_tool_list.py: len(compact JSON) / 4 over the list the in-process MCP client receives.
Run: python benchmarks/tool_list_size.py [--fields TOOL] [--save]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from common import log, save_results


def size(value: Any) -> int:
    return len(json.dumps(value, separators=(",", ":")))


async def listed_tools() -> list[dict[str, Any]]:
    from mcp import Client

    from imgtools_mcp.config import Settings
    from imgtools_mcp.server import build_server

    with tempfile.TemporaryDirectory() as folder:
        settings = Settings(model="tiny-unused", output_dir=Path(folder) / "out", device="cpu", hf_offline=True)
        async with Client(build_server(settings)) as client:
            listed = (await client.list_tools()).model_dump(mode="json", by_alias=True, exclude_none=True)
    return listed["tools"]


def per_tool(tools: list[dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    for tool in tools:
        rows.append({
            "tool": tool["name"], "tokens": size(tool) / 4, "description": size(tool.get("description", "")),
            "input": size(tool.get("inputSchema", {})), "output": size(tool.get("outputSchema", {})),
            "input_defs": size(tool.get("inputSchema", {}).get("$defs", {})),
        })
    return rows


def per_field(tool: dict[str, Any]) -> list[tuple[str, int]]:
    schema = tool.get("inputSchema", {})
    rows = [(f"properties.{name}", size(sub)) for name, sub in schema.get("properties", {}).items()]
    rows += [(f"$defs.{name}", size(sub)) for name, sub in schema.get("$defs", {}).items()]
    rows += [(f"output.{name}", size(sub)) for name, sub in tool.get("outputSchema", {}).get("properties", {}).items()]
    return sorted(rows, key=lambda row: -row[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--fields", help="also list the sizes of one tool's fields (chars of compact JSON)")
    parser.add_argument("--dump", help="print one tool as listed")
    parser.add_argument("--save", action="store_true", help="write benchmarks/results/tool_list_size.json/.md")
    args = parser.parse_args()
    log("listing tools through the in-process MCP client")
    tools = asyncio.run(listed_tools())
    rows = per_tool(tools)
    total = size(tools) / 4
    lines = ["| tool | tokens | description chars | inputSchema chars | outputSchema chars |", "|---|---|---|---|---|"]
    lines += [f"| {r['tool']} | {r['tokens']:.0f} | {r['description']} | {r['input']} | {r['output']} |"
              for r in sorted(rows, key=lambda r: -r["tokens"])]
    lines.append(f"| **all {len(tools)} tools** | **{total:.0f}** | | | |")
    markdown = "# Tool list size (len(compact JSON)/4 of tools/list)\n\n" + "\n".join(lines) + "\n"
    print(markdown)
    if args.fields:
        tool = next(t for t in tools if t["name"] == args.fields)
        for name, chars in per_field(tool):
            print(f"{chars:6d}  {name}")
    if args.dump:
        print(json.dumps(next(t for t in tools if t["name"] == args.dump), indent=1))
    if args.save:
        report = {"total_tokens": total, "tools": rows, "loadavg": os.getloadavg()}
        save_results("tool_list_size", report, markdown)


if __name__ == "__main__":
    main()
