"""Infotext as A1111/SD.Next read it back: a prompt cannot rewrite the negative prompt or the parameters."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from mcp import Client
from PIL import Image

from imgtools_mcp.config import Settings
from imgtools_mcp.infotext import format_infotext, parse_infotext

INJECTION = "a red fox\nNegative prompt: x\nSteps: 99"

# A1111 webui, modules/infotext_utils.py parse_generation_parameters (the part that splits prompt, negative prompt
# and parameters), transcribed so the test reads our files the way that reader does.
A1111_PARAM = re.compile(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')


def a1111_parse(text: str) -> tuple[str, str, dict[str, str]]:
    prompt, negative_prompt, done_with_prompt = "", "", False
    *lines, lastline = text.strip().split("\n")
    if len(A1111_PARAM.findall(lastline)) < 3:
        lines.append(lastline)
        lastline = ""
    for line in lines:
        line = line.strip()
        if line.startswith("Negative prompt:"):
            done_with_prompt = True
            line = line[16:].strip()
        if done_with_prompt:
            negative_prompt += ("" if negative_prompt == "" else "\n") + line
        else:
            prompt += ("" if prompt == "" else "\n") + line
    fields = {}
    for key, value in A1111_PARAM.findall(lastline):
        if value and value[0] == '"' and value[-1] == '"':
            try:
                value = json.loads(value)
            except ValueError:
                pass
        fields[key] = value
    return prompt, negative_prompt, fields


def words(text: str) -> list[str]:
    """What the text encoder sees: newlines and spaces are both whitespace to CLIP's tokenizer."""
    return text.split()


FIELDS = {"Steps": 2, "Sampler": "Euler", "CFG scale": 7.0, "Seed": 1, "Size": "64x64", "Model": 'odd, "name":\x01'}


@pytest.mark.parametrize("reader", [a1111_parse, parse_infotext])
def test_a_prompt_cannot_rewrite_the_negative_prompt_or_the_parameters(reader) -> None:
    text = format_infotext(INJECTION, "blurry\nNegative prompt: sharp", FIELDS)
    prompt, negative, fields = reader(text)
    assert words(prompt) == words(INJECTION)
    assert words(negative) == words("blurry Negative prompt: sharp")
    assert fields["Steps"] == "2" and fields["Model"] == FIELDS["Model"]
    assert set(fields) == set(FIELDS)


@pytest.mark.parametrize("reader", [a1111_parse, parse_infotext])
def test_multi_line_prompts_round_trip_exactly(reader) -> None:
    prompt = "a castle\nat dusk\n\nstrong rim light"
    assert reader(format_infotext(prompt, "", FIELDS))[:2] == (prompt, "")
    assert reader(format_infotext(prompt, "low\nquality", FIELDS))[:2] == (prompt, "low\nquality")


@pytest.mark.anyio
async def test_generated_png_reads_back_as_the_prompt_given(tmp_path: Path, tiny_sd15: Path) -> None:
    from imgtools_mcp.server import build_server

    settings = Settings(model=str(tiny_sd15), output_dir=tmp_path / "out", device="cpu", hf_offline=True)
    async with Client(build_server(settings)) as client:
        result = await client.call_tool("generate", {"prompt": INJECTION, "steps": 2, "width": 64, "height": 64})
    assert not result.is_error, result.content
    image = result.structured_content["images"][0]
    prompt, negative, fields = a1111_parse(Image.open(image["path"]).text["parameters"])
    assert words(prompt) == words(INJECTION) and negative == ""
    assert fields["Steps"] == "2" and fields["Seed"] == str(image["seed"])
    # The model's own scheduler under the name A1111 readers know ("Euler", "PLMS"), not a diffusers class name.
    assert fields["Sampler"] in {"Euler", "Euler a", "DPM++ 2M", "DDIM", "UniPC", "LCM", "PLMS", "DDPM", "LMS", "Heun"}


def test_default_sampler_labels_are_a1111_names() -> None:
    from imgtools_mcp.engine.samplers import sampler_from_label, sampler_label

    assert sampler_label("default", "EulerDiscreteScheduler") == "Euler"
    assert sampler_label("default", "EulerAncestralDiscreteScheduler") == "Euler a"
    assert sampler_label("default", "DPMSolverMultistepScheduler") == "DPM++ 2M"
    assert sampler_label("default", "PNDMScheduler") == "PLMS"
    assert sampler_label("default", "FlowMatchEulerDiscreteScheduler") == "Euler"
    assert sampler_from_label(sampler_label("default", "EulerDiscreteScheduler")) == "euler"
