"""Load and fill the VLM prompt templates kept as plain text files in `prompts/`."""

from __future__ import annotations

import re
from pathlib import Path

# Where templates are looked for, first match wins:
# 1. `imgtools_mcp/prompts/` inside the package: the one copy of the templates, shipped in the wheel
#    as package data (the repository's top-level `prompts/` is a symlink to it);
# 2. `prompts/` at the repository root (parents[3] of this file: vlm -> imgtools_mcp -> src -> repo),
#    for a checkout whose file system turned that symlink into a folder of its own.
PROMPT_DIRS = (
    Path(__file__).resolve().parents[1] / "prompts",
    Path(__file__).resolve().parents[3] / "prompts",
)

# `{name}` placeholders only: braces around anything else (JSON examples) stay literal text.
_PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")


def prompts_dir() -> Path:
    """The directory templates are read from."""
    for directory in PROMPT_DIRS:
        if directory.is_dir() and any(directory.glob("*.txt")):
            return directory
    searched = ", ".join(str(d) for d in PROMPT_DIRS)
    raise FileNotFoundError(f"no VLM prompt templates found; looked in {searched}")


def prompt_names() -> list[str]:
    """Names of the available templates (file names without `.txt`)."""
    return sorted(path.stem for path in prompts_dir().glob("*.txt"))


def load_prompt(name: str) -> str:
    """The raw text of template `name` (read on every call, so edits apply without a restart)."""
    path = prompts_dir() / f"{name}.txt"
    if not path.is_file():
        raise FileNotFoundError(f"unknown prompt {name!r}; available: {', '.join(prompt_names())}")
    return path.read_text(encoding="utf-8")


def prompt_placeholders(name: str) -> list[str]:
    """The `{placeholders}` template `name` expects, in order of first use."""
    return list(dict.fromkeys(_PLACEHOLDER.findall(load_prompt(name))))


def render_prompt(name: str, **fields: object) -> str:
    """Template `name` with each `{placeholder}` replaced by `str(fields[placeholder])`."""
    template = load_prompt(name)
    missing = [field for field in prompt_placeholders(name) if field not in fields]
    if missing:
        raise KeyError(f"prompt {name!r} needs {', '.join(missing)}")
    return _PLACEHOLDER.sub(lambda match: str(fields.get(match.group(1), match.group(0))), template).strip()
