"""An agent loop without a human: ask imgtools to refine toward a goal in the background, poll, report.

    OPENROUTER_API_KEY=... python examples/agent_refine.py "a red bicycle leaning on a blue door"

The server runs generate -> critique (Qwen3.5 by default) -> revise rounds itself; the agent only
starts the job, watches its progress and reads the best image and the per-round history.
"""

from __future__ import annotations

import argparse
import os
import sys

import anyio
from mcp import Client, StdioServerParameters


async def refine(goal: str, rounds: int, size: int | None, steps: int | None) -> int:
    server = StdioServerParameters(command=sys.executable, args=["-m", "imgtools_mcp.cli", "serve"], env=dict(os.environ))
    arguments: dict = {"goal": goal, "max_rounds": rounds, "target_score": 8.5, "background": True}
    if size:
        arguments.update(width=size, height=size)
    if steps:
        arguments["steps"] = steps
    async with Client(server) as client:
        started = await client.call_tool("refine", arguments)
        if started.is_error:
            print(started.content[0].text, file=sys.stderr)
            return 1
        job_id = started.structured_content["job_id"]
        print(f"started {job_id}")
        while True:
            # get_job long-polls: it returns as soon as the job ends, or after wait_s with the progress so far.
            status = await client.call_tool("get_job", {"job_id": job_id, "wait_s": 10})
            state = status.structured_content
            print(f"  {state['state']}: {state.get('message') or ''}")
            if state["state"] in ("done", "error", "cancelled", "interrupted"):
                break
        if state["state"] != "done":
            print(state.get("error"), file=sys.stderr)
            return 1
        result = state["result"]
        for number, round_ in enumerate(result["rounds"], start=1):
            scores = [c.get("score") for c in round_.get("candidates", [])]
            print(f"round {number}: {round_['prompt']!r} scores {scores}")
        best = result["best"]
        print(f"best: {best['uri']} score {best['score']} ({best['path']})")
        return 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("goal")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--size", type=int)
    parser.add_argument("--steps", type=int)
    args = parser.parse_args()
    sys.exit(anyio.run(refine, args.goal, args.rounds, args.size, args.steps))


if __name__ == "__main__":
    main()
