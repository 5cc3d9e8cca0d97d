"""The README's snippets work: JSON parses into valid host configs, and every imgtools-mcp command line parses."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest

from imgtools_mcp.cli import build_parser

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()
BLOCKS = re.findall(r"```(\w+)\n(.*?)```", README, re.DOTALL)


def imgtools_invocations(text: str) -> list[list[str]]:
    """Every `imgtools-mcp ...` command in a shell snippet, as argv after the program name."""
    found = []
    for line in text.replace("\\\n", " ").splitlines():
        for command in re.split(r"&&|\|\|", line.split("#")[0]):
            words = shlex.split(command)
            for index, word in enumerate(words):
                if word.endswith("imgtools-mcp") and not word.endswith("/imgtools-mcp") or word.endswith("/bin/imgtools-mcp"):
                    found.append(words[index + 1 :])
                    break
    return found


def test_readme_has_json_and_shell_snippets() -> None:
    kinds = [kind for kind, _ in BLOCKS]
    assert kinds.count("json") >= 4 and kinds.count("sh") >= 4


@pytest.mark.parametrize("body", [body for kind, body in BLOCKS if kind == "json"])
def test_json_snippets_are_valid_host_configs(body: str) -> None:
    config = json.loads(body)
    servers = config.get("mcpServers") or config.get("servers")
    assert servers, "a host config names its servers"
    for entry in servers.values():
        if "url" in entry:
            assert entry["url"].endswith("/mcp")
            assert entry["headers"]["Authorization"].startswith("Bearer ")
            continue
        args = [entry["command"], *entry["args"]]
        argv = args[args.index("imgtools-mcp") + 1 :] if "imgtools-mcp" in args else args[1:]
        build_parser().parse_args(argv)


def test_every_imgtools_command_line_parses() -> None:
    invocations = [argv for kind, body in BLOCKS if kind == "sh" for argv in imgtools_invocations(body)]
    assert len(invocations) >= 5
    for argv in invocations:
        build_parser().parse_args(argv)


def test_documented_variables_are_settings() -> None:
    from imgtools_mcp.config import Settings

    documented = set(re.findall(r"`IMGTOOLS_([A-Z_]+)`", README))
    fields = {name.upper() for name in Settings.model_fields}
    assert documented, "the README documents its variables"
    assert documented <= fields, documented - fields
