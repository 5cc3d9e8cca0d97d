"""Sweep axes, pure: which parameters may be swept, each axis's values and labels, and one cell's arguments."""

from __future__ import annotations

import math
import typing
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

from ..context import RunInputError
from .models import AxisName, SweepAxis

# Fields of the base request that are not values to compare: inputs are resolved once for all cells,
# and each cell is exactly one image made in the foreground of the sweep.
NOT_SWEEPABLE = {
    "tool": "the sweep's tool is fixed; run one sweep per tool",
    "image": "input images are resolved once for all cells",
    "mask": "input images are resolved once for all cells",
    "loras": "use lora:<name> to sweep one LoRA's weight",
    "control": "use control:<index> to sweep one ControlNet's weight",
    "num_images": "each cell is one image; sweep seed for variations",
    "background": "set background on the sweep itself",
}
SPECIAL_PARAMS = ("size", "prompt_sr", "lora:<name>", "control:<index>")


@dataclass
class Axis:
    name: AxisName
    param: str
    values: list[Any]
    labels: list[str]
    search: str | None = None  # prompt_sr: the text each value replaces


def numeric_kind(request_model: type[BaseModel], param: str) -> type | None:
    """float or int for a numeric parameter (a LoRA's weight is a float), else None."""
    if param.startswith(("lora:", "control:")):
        return float
    info = request_model.model_fields.get(param)
    if info is None:
        return None
    options = typing.get_args(info.annotation) or (info.annotation,)
    if float in options:
        return float
    if int in options:
        return int
    return None


def range_values(start: float, stop: float, count: int, kind: type, param: str) -> list[Any]:
    """`count` evenly spaced values from start to stop inclusive; integers round half up, sizes to multiples of 8."""
    raw = [start] if count == 1 else [start + (stop - start) * (i / (count - 1)) for i in range(count)]
    if kind is float:
        return [round(value, 6) for value in raw]
    if param in ("width", "height"):
        return [int(math.floor(value / 8 + 0.5)) * 8 for value in raw]
    return [int(math.floor(value + 0.5)) for value in raw]


def display(param: str, value: Any) -> str:
    """A value as a grid label shows it: a model path by its last part, a size as WxH, a float without noise."""
    if value is None:
        return "default"
    if isinstance(value, float):
        return f"{value:g}"
    if param == "model" and isinstance(value, str) and ("/" in value or "\\" in value) and (
        value.startswith(("/", ".", "~")) or value.endswith((".safetensors", ".ckpt")) or ":" in value[:3]
    ):
        return value.replace("\\", "/").rstrip("/").rsplit("/", 1)[-1]
    if isinstance(value, list):
        return "x".join(str(v) for v in value) if param == "size" else str(value)
    return str(value)


def _targets(param: str) -> set[str]:
    if param == "size":
        return {"width", "height"}
    if param == "prompt_sr":
        return set()  # several search/replace axes may act on one prompt
    return {param}


def _check_param(name: str, param: str, tool: str, fields: dict[str, Any]) -> None:
    if param in NOT_SWEEPABLE:
        raise RunInputError(f"{name}.param: {param!r} cannot be swept ({NOT_SWEEPABLE[param]})")
    if param.startswith("lora:"):
        if not param[len("lora:") :].strip():
            raise RunInputError(f"{name}.param: name the LoRA, as lora:<name>")
    elif param.startswith("control:"):
        if not param[len("control:") :].strip().isdigit():
            raise RunInputError(f"{name}.param: give the ControlNet's place in base.control, as control:0")
    elif param not in fields and param not in SPECIAL_PARAMS:
        sweepable = [field for field in fields if field not in NOT_SWEEPABLE]
        raise RunInputError(
            f"{name}.param: {param!r} is not a parameter of {tool}; allowed: {', '.join([*sweepable, *SPECIAL_PARAMS])}"
        )


def resolve_axes(
    specs: dict[str, SweepAxis | None], tool: str, request_model: type[BaseModel], prompt: str, negative: str, max_cells: int
) -> list[Axis]:
    """Check each axis (name, form, prompt_sr's search text, the cell limit) and list its values.

    The cell limit is checked from the axes' lengths, before any cell exists.
    """
    axes: list[Axis] = []
    claimed: dict[str, str] = {}
    for name in ("x", "y", "z"):
        spec = specs.get(name)
        if spec is None:
            continue
        param = spec.param.strip()
        _check_param(name, param, tool, request_model.model_fields)
        for target in _targets(param):
            if target in claimed:
                raise RunInputError(f"{name}.param: {param!r} is already swept on {claimed[target]}")
            claimed[target] = name
        if spec.values is not None:
            values = list(spec.values)
        else:
            kind = numeric_kind(request_model, param)
            if kind is None:
                raise RunInputError(f"{name}: start/stop/count need a numeric parameter; give values for {param!r}")
            assert spec.start is not None and spec.stop is not None and spec.count is not None
            values = range_values(spec.start, spec.stop, spec.count, kind, param)
        search = None
        if param == "prompt_sr":
            values = [str(value) for value in values]
            search = values[0]
            if not search or (search not in prompt and search not in negative):
                raise RunInputError(
                    f"{name}.values: prompt_sr replaces its first value, {search!r}, which must occur in "
                    "base.prompt or base.negative_prompt"
                )
        labels = [f"{param}: {display(param, value)}" for value in values]
        axes.append(Axis(name, param, values, labels, search))
    total = math.prod(len(axis.values) for axis in axes)
    if total > max_cells:
        shape = " × ".join(f"{axis.name} {len(axis.values)}" for axis in axes)
        raise RunInputError(f"{total} cells ({shape}) exceed IMGTOOLS_MAX_SWEEP_CELLS={max_cells}; use fewer values")
    return axes


def parse_size(value: Any) -> tuple[int, int]:
    if isinstance(value, str):
        parts = value.lower().replace("×", "x").split("x")
        if len(parts) == 2 and all(part.strip().isdigit() for part in parts):
            return int(parts[0]), int(parts[1])
    elif isinstance(value, list | tuple) and len(value) == 2 and all(isinstance(v, int) for v in value):
        return int(value[0]), int(value[1])
    raise ValueError(f"size: expected 'WIDTHxHEIGHT' such as '512x768' (got {value!r})")


def cell_arguments(base_args: dict[str, Any], assignments: list[tuple[Axis, Any]]) -> dict[str, Any]:
    """The base tool's arguments for one cell: the base with each axis's value applied, in axis order."""
    args = dict(base_args)
    for axis, value in assignments:
        param = axis.param
        if param == "size":
            args["width"], args["height"] = parse_size(value)
        elif param == "prompt_sr":
            assert axis.search is not None
            args["prompt"] = str(args.get("prompt", "")).replace(axis.search, value)
            args["negative_prompt"] = str(args.get("negative_prompt") or "").replace(axis.search, value)
        elif param.startswith("lora:"):
            name = param[len("lora:") :].strip()
            loras = [dict(lora) for lora in args.get("loras") or []]
            for lora in loras:
                if lora.get("name") == name:
                    lora["weight"] = value
                    break
            else:
                loras.append({"name": name, "weight": value})
            args["loras"] = loras
        elif param.startswith("control:"):
            index = int(param[len("control:") :])
            controls = [dict(control) for control in args.get("control") or []]
            if index >= len(controls):
                raise RunInputError(f"{axis.name}.param: {param} but base.control has {len(controls)} entr{'y' if len(controls) == 1 else 'ies'}")
            controls[index]["weight"] = value
            args["control"] = controls
        else:
            args[param] = value
    return args
