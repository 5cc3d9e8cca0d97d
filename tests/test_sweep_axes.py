"""Sweep axes are pure: values, labels, one cell's arguments and the up-front refusals, table-tested without an engine."""

from __future__ import annotations

import math

import pytest
from pydantic import ValidationError

from imgtools_mcp.params import EditRequest, GenerateRequest, one_line_error
from imgtools_mcp.runs.context import RunInputError
from imgtools_mcp.runs.sweep.axes import Axis, cell_arguments, display, numeric_kind, parse_size, range_values, resolve_axes
from imgtools_mcp.runs.sweep.models import SweepAxis, SweepRequest


@pytest.mark.parametrize(
    "start, stop, count, kind, param, expected",
    [
        (1, 2, 3, float, "guidance_scale", [1.0, 1.5, 2.0]),
        (1, 4, 3, int, "steps", [1, 3, 4]),  # 2.5 rounds half up
        (1, 2, 3, int, "steps", [1, 2, 2]),
        (64, 98, 2, int, "width", [64, 96]),  # sizes snap to multiples of 8
        (5, 9, 1, int, "seed", [5]),
        (0.1, 0.3, 3, float, "strength", [0.1, 0.2, 0.3]),
    ],
)
def test_range_values(start, stop, count, kind, param, expected) -> None:
    assert range_values(start, stop, count, kind, param) == expected


@pytest.mark.parametrize(
    "param, value, label",
    [
        ("model", None, "default"),
        ("model", "/models/sd/dreamshaper.safetensors", "dreamshaper.safetensors"),
        ("model", "stabilityai/sdxl-turbo", "stabilityai/sdxl-turbo"),  # a hub id stays whole
        ("model", "C:\\models\\tiny\\", "tiny"),
        ("guidance_scale", 7.50, "7.5"),
        ("size", [512, 768], "512x768"),
        ("sampler", "euler_a", "euler_a"),
    ],
)
def test_display(param, value, label) -> None:
    assert display(param, value) == label


@pytest.mark.parametrize("value, size", [("512x768", (512, 768)), ("64×96", (64, 96)), ([96, 64], (96, 64))])
def test_parse_size(value, size) -> None:
    assert parse_size(value) == size


@pytest.mark.parametrize("value", ["big", "64x", [64], [64, "a"], 64])
def test_parse_size_refuses_what_is_not_a_size(value) -> None:
    with pytest.raises(ValueError, match="WIDTHxHEIGHT"):
        parse_size(value)


def test_cell_arguments_apply_each_axis() -> None:
    size, sr, lora = Axis("x", "size", [], []), Axis("y", "prompt_sr", [], [], search="red"), Axis("z", "lora:ink", [], [])
    base = {"prompt": "a red cube", "negative_prompt": "red blur", "loras": [{"name": "ink", "weight": 1.0}]}
    args = cell_arguments(base, [(size, "64x96"), (sr, "blue"), (lora, 0.5)])
    assert (args["width"], args["height"]) == (64, 96)
    assert args["prompt"] == "a blue cube" and args["negative_prompt"] == "blue blur"
    assert args["loras"] == [{"name": "ink", "weight": 0.5}]
    assert base["loras"] == [{"name": "ink", "weight": 1.0}]  # the base is never changed


def test_numeric_kinds() -> None:
    assert numeric_kind(GenerateRequest, "guidance_scale") is float
    assert numeric_kind(GenerateRequest, "steps") is int
    assert numeric_kind(GenerateRequest, "lora:any") is float
    assert numeric_kind(GenerateRequest, "sampler") is None


def axes(max_cells: int = 64, tool=GenerateRequest, name="generate", prompt="a red cube", **specs):
    return resolve_axes({k: SweepAxis(**v) for k, v in specs.items()}, name, tool, prompt, "", max_cells)


@pytest.mark.parametrize(
    "specs, needles",
    [
        ({"x": {"param": "colour", "values": [1]}}, ["x.param", "colour", "allowed", "seed"]),
        ({"x": {"param": "image", "values": ["a"]}}, ["x.param", "resolved once"]),
        ({"x": {"param": "tool", "values": ["edit"]}}, ["x.param", "tool"]),
        ({"x": {"param": "lora:", "values": [1]}}, ["x.param", "lora:<name>"]),
        ({"x": {"param": "seed", "values": [1]}, "y": {"param": "seed", "values": [2]}}, ["y.param", "already swept on x"]),
        ({"x": {"param": "size", "values": ["64x64"]}, "y": {"param": "height", "values": [64]}}, ["y.param", "height"]),
        ({"x": {"param": "sampler", "start": 1, "stop": 2, "count": 2}}, ["x:", "numeric", "sampler"]),
        ({"x": {"param": "prompt_sr", "values": ["green", "blue"]}}, ["x.values", "green", "base.prompt"]),
        ({"x": {"param": "seed", "start": 0, "stop": 1e15, "count": 1000}}, ["1000 cells", "IMGTOOLS_MAX_SWEEP_CELLS=64"]),
        ({"x": {"param": "seed", "values": [1] * 9}, "y": {"param": "steps", "values": [1] * 9}}, ["81 cells", "x 9 × y 9"]),
    ],
)
def test_axes_refused_up_front(specs: dict, needles: list[str]) -> None:
    with pytest.raises(RunInputError) as caught:
        axes(**specs)
    for needle in needles:
        assert needle in str(caught.value), str(caught.value)


def test_edit_axes_may_sweep_strength_and_labels_name_the_values() -> None:
    (axis,) = axes(tool=EditRequest, name="edit", x={"param": "strength", "values": [0.25, 0.5]})
    assert axis.labels == ["strength: 0.25", "strength: 0.5"]
    with pytest.raises(RunInputError, match="not a parameter of generate"):
        axes(x={"param": "strength", "values": [0.5]})


@pytest.mark.parametrize(
    "axis, needle",
    [
        ({"param": "seed", "start": 0, "stop": math.inf, "count": 2}, "stop: Input should be a finite number"),
        ({"param": "seed", "start": math.nan, "stop": 1, "count": 2}, "start: Input should be a finite number"),
        ({"param": "seed", "start": 0, "stop": 1, "count": 10**9}, "count: Input should be less than or equal to 1000"),
        ({"param": "seed", "values": list(range(1001))}, "values: List should have at most 1000 items"),
        ({"param": "seed", "values": [{"a": 1}]}, "values.0"),
    ],
)
def test_axis_bounds_are_checked_at_the_edge(axis: dict, needle: str) -> None:
    with pytest.raises(ValidationError) as caught:
        SweepRequest.model_validate({"base": {"prompt": "p"}, "x": axis})
    text = one_line_error(caught.value)
    assert needle in text and "\n" not in text, text
    assert text.startswith("x."), text


def test_the_base_is_tagged_by_the_sweeps_tool() -> None:
    edit = SweepRequest.model_validate({"tool": "edit", "base": {"prompt": "p", "image": "x"}, "x": {"param": "seed", "values": [1]}})
    assert isinstance(edit.base, EditRequest) and edit.base.tool == "edit"
    tagged = SweepRequest.model_validate({"base": {"prompt": "p", "image": "x", "tool": "edit"}, "x": {"param": "seed", "values": [1]}})
    assert tagged.tool == "edit" and isinstance(tagged.base, EditRequest)
    with pytest.raises(ValidationError) as caught:
        SweepRequest.model_validate({"tool": "edit", "base": {"prompt": "p"}, "x": {"param": "seed", "values": [1]}})
    assert one_line_error(caught.value) == "base.image: required"
    with pytest.raises(ValidationError, match="tool and base.tool differ"):
        SweepRequest.model_validate({"tool": "inpaint", "base": {"prompt": "p", "tool": "edit"}, "x": {"param": "seed", "values": [1]}})
