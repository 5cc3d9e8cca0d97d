"""SD.Next/A1111 infotext: the `parameters` PNG text chunk those tools write and read back."""

from __future__ import annotations

import re
from typing import Any

_PAIR = re.compile(r'\s*([\w][\w \-/]*):\s*("(?:\\.|[^\\"])*"|[^,]*)(?:,|$)')
# A1111's extra-network syntax in a prompt: <lora:name:weight> (weight optional, default 1).
_LORA_TAG = re.compile(r"<lora:([^:>]+)(?::([-+]?\d*\.?\d+))?>")


def _quote(value: Any) -> str:
    text = str(value)
    if any(ch in text for ch in ',:"\n'):
        return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'
    return text


def format_infotext(prompt: str, negative_prompt: str, fields: dict[str, Any]) -> str:
    """`prompt\\nNegative prompt: ...\\nSteps: 20, Sampler: Euler a, ...` with None values left out."""
    lines = [prompt]
    if negative_prompt:
        lines.append(f"Negative prompt: {negative_prompt}")
    lines.append(", ".join(f"{key}: {_quote(value)}" for key, value in fields.items() if value is not None))
    return "\n".join(lines)


def _unquote(value: str) -> str:
    value = value.strip()
    if len(value) >= 2 and value[0] == value[-1] == '"':
        body = value[1:-1]
        return re.sub(r"\\(.)", lambda m: "\n" if m.group(1) == "n" else m.group(1), body)
    return value


def parse_infotext(text: str) -> tuple[str, str, dict[str, str]]:
    """Inverse of format_infotext: (prompt, negative prompt, {key: value as text})."""
    lines = text.rstrip("\n").split("\n")
    fields_line = lines[-1] if len(lines) > 1 or _PAIR.match(lines[-1] or "") else ""
    body = lines[:-1] if fields_line else lines
    prompt_lines: list[str] = []
    negative_lines: list[str] = []
    target = prompt_lines
    for line in body:
        if line.startswith("Negative prompt:"):
            target = negative_lines
            line = line[len("Negative prompt:") :].strip()
        target.append(line)
    fields = {m.group(1).strip(): _unquote(m.group(2)) for m in _PAIR.finditer(fields_line) if m.group(1)}
    return "\n".join(prompt_lines), "\n".join(negative_lines), fields


def lora_tag(name: str, weight: float) -> str:
    return f"<lora:{name}:{weight:g}>"


def split_lora_tags(prompt: str) -> tuple[str, list[tuple[str, float]]]:
    """A prompt read back from infotext: the text the model saw, and its `<lora:name:weight>` tags as (name, weight)."""
    tags = [(m.group(1), float(m.group(2)) if m.group(2) else 1.0) for m in _LORA_TAG.finditer(prompt)]
    # Tags are appended after a space (as format_infotext's callers write them), so trailing space goes with them.
    text = _LORA_TAG.sub("", prompt).rstrip() if tags else prompt
    return text, tags
