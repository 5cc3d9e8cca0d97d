"""SD.Next/A1111 infotext: the `parameters` PNG text chunk those tools write and read back."""

from __future__ import annotations

import json
import re
from typing import Any

# A1111's own pattern for one `Key: value` pair of the parameters line (modules/infotext_utils.py: re_param_code).
_PAIR = re.compile(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')
# A1111's extra-network syntax in a prompt: <lora:name:weight> (weight optional, default 1).
_LORA_TAG = re.compile(r"<lora:([^:>]+)(?::([-+]?\d*\.?\d+))?>")
_NEGATIVE = "Negative prompt:"
# A1111 and SD.Next read the last line as parameters only when it holds at least this many pairs.
_MIN_PAIRS = 3


def _quote(value: Any) -> str:
    text = str(value)
    if any(ch in text for ch in ',:"') or any(ord(ch) < 32 for ch in text):
        # JSON string syntax: what A1111's reader (json.loads) undoes, control characters included.
        return json.dumps(text, ensure_ascii=False)
    return text


def _prompt_lines(text: str) -> str:
    """A prompt as infotext readers can read it back: its own lines kept, except that a line starting with
    `Negative prompt:` is joined to the one before it with a space.

    A1111/SD.Next readers split infotext at newlines, and the first line that starts with `Negative prompt:` ends
    the prompt; a prompt carrying `\nNegative prompt: x\nSteps: 99` would otherwise rewrite what they load. A space
    is what the text encoder sees a newline as, so the image the prompt describes is the same.
    """
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    kept = [lines[0]]
    for line in lines[1:]:
        if line.strip().startswith(_NEGATIVE):
            kept[-1] = f"{kept[-1]} {line.strip()}"
        else:
            kept.append(line)
    return "\n".join(kept)


def format_infotext(prompt: str, negative_prompt: str, fields: dict[str, Any]) -> str:
    """`prompt\\nNegative prompt: ...\\nSteps: 20, Sampler: Euler a, ...` with None values left out."""
    # (A prompt whose very first line starts with "Negative prompt:" is read by A1111 as a negative prompt whatever
    # is done short of changing its words; the parameters line stays ours either way.)
    lines = [_prompt_lines(prompt)]
    if negative_prompt:
        lines.append(f"{_NEGATIVE} {_prompt_lines(negative_prompt)}")
    lines.append(", ".join(f"{key}: {_quote(value)}" for key, value in fields.items() if value is not None))
    return "\n".join(lines)


def _unquote(value: str) -> str:
    value = value.strip()
    if len(value) >= 2 and value[0] == value[-1] == '"':
        try:
            decoded = json.loads(value)
        except ValueError:
            return value  # as A1111 does: a value that is not valid JSON stays as written
        return decoded if isinstance(decoded, str) else value
    return value


def parse_infotext(text: str) -> tuple[str, str, dict[str, str]]:
    """Inverse of format_infotext, with A1111's reading rules (parse_generation_parameters): the last line holds
    the parameters if it has at least 3 pairs; lines are stripped; the first line starting with `Negative prompt:`
    begins the negative prompt. Returns (prompt, negative prompt, {key: value as text})."""
    *lines, last = text.strip().split("\n")
    if len(_PAIR.findall(last)) < _MIN_PAIRS:
        lines.append(last)
        last = ""
    prompt_lines: list[str] = []
    negative_lines: list[str] = []
    target = prompt_lines
    for line in lines:
        line = line.strip()
        if target is prompt_lines and line.startswith(_NEGATIVE):
            target = negative_lines
            line = line[len(_NEGATIVE) :].strip()
        target.append(line)
    fields = {key.strip(): _unquote(value) for key, value in _PAIR.findall(last)}
    return "\n".join(prompt_lines), "\n".join(negative_lines), fields


def lora_tag(name: str, weight: float) -> str:
    return f"<lora:{name}:{weight:g}>"


def split_lora_tags(prompt: str) -> tuple[str, list[tuple[str, float]]]:
    """A prompt read back from infotext: the text the model saw, and its `<lora:name:weight>` tags as (name, weight)."""
    tags = [(m.group(1), float(m.group(2)) if m.group(2) else 1.0) for m in _LORA_TAG.finditer(prompt)]
    # Tags are appended after a space (as format_infotext's callers write them), so trailing space goes with them.
    text = _LORA_TAG.sub("", prompt).rstrip() if tags else prompt
    return text, tags
