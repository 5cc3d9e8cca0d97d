"""Every tool, fuzzed from its own input schema: each call ends in a result or a one-line tool error, never a crash.

Strategies are built from the schemas the client lists, so a tool added later is fuzzed too. Values mix valid
ones with wrong types, out-of-range and huge numbers, unicode and empty strings, `../` paths, `file://` URLs,
corrupt, huge and bomb-sized images. Generation is kept cheap: a tiny model, small IMGTOOLS_MAX_PIXELS, steps
clamped to 2 wherever a valid step count was drawn.
"""

from __future__ import annotations

import base64
import io
import json
import logging
import os
import re
import struct
import time
from functools import partial
from pathlib import Path
from typing import Any

import anyio
import anyio.from_thread
import pytest
from hypothesis import HealthCheck, given, settings as hypothesis_settings, strategies as st
from mcp import Client
from openai_loopback import OpenAILoopback
from PIL import Image

from imgtools_mcp.config import Settings
from imgtools_mcp.server import build_server

EXAMPLES_PER_TOOL = int(os.environ.get("FUZZ_EXAMPLES", "8"))
CALL_LIMIT_S = 90  # a call running longer than this counts as a hang
MAX_PIXELS = 128 * 128


def png_bytes(size: tuple[int, int], mode: str = "RGB") -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, size).save(buffer, format="PNG")
    return buffer.getvalue()


def nasty_strings(tmp: Path, output_id: str) -> list[str]:
    small = png_bytes((64, 64))
    outside = tmp / "outside.png"
    outside.write_bytes(small)
    bomb = png_bytes((12_000, 12_000), "1")  # tiny file, 144 Mpx once decoded
    return [
        "",
        " ",
        "\x00",
        "é漢字🙂\u202e",
        "x" * 5000,
        "../../../../etc/passwd",
        "../" * 12 + "etc/shadow",
        "/etc/passwd",
        str(outside),  # a real image outside the allowed input roots
        "~/.ssh/id_rsa",
        "%2e%2e%2f%2e%2e%2fetc%2fpasswd",
        "file:///etc/passwd",
        f"file://{outside}",
        "imgtools://images/../../etc/passwd",
        "imgtools://images/20990101-000000-deadbeef",
        "20990101-000000-deadbeef",
        output_id,
        f"imgtools://images/{output_id}",
        "data:image/png;base64,!!!not base64!!!",
        "data:image/png;base64," + base64.b64encode(os.urandom(3000)).decode(),
        "data:image/png;base64," + base64.b64encode(small[: len(small) // 2]).decode(),  # truncated PNG
        "data:image/png;base64," + base64.b64encode(small).decode(),
        "data:text/html;base64,PGgxPmhpPC9oMT4=",
        base64.b64encode(bomb).decode(),
        base64.b64encode(os.urandom(1_500_000)).decode(),  # over IMGTOOLS_MAX_INPUT_BYTES
        "http://127.0.0.1:9/image.png",  # nothing listens there
        "ftp://127.0.0.1/image.png",
        "javascript:alert(1)",
        "euler",
        "seed",
        "null",
        "NaN",
    ]


HUGE_INTS = [0, -1, 1, 2, 7, 63, 64, 65, 128, 4096, 4097, 2**31, 2**53 + 1, 2**63, -(2**63), 10**30]
ODD_FLOATS = [0.0, -0.0, 1e-300, -1.0, 0.5, 1.0, 1.0000001, 30.0, 1e308, float("inf"), float("-inf"), float("nan")]


class SchemaStrategies:
    """Hypothesis strategies from JSON Schema: valid arguments with one field broken, or anything at all."""

    def __init__(self, strings: list[str], valid_images: list[str], parameter_pool: dict[str, dict[str, Any]], defs: dict[str, Any]) -> None:
        self.strings = st.sampled_from(strings)
        self.pool = parameter_pool  # every parameter of every tool, for free-form objects (sweep's base)
        self.defs = defs  # every tool's $defs: pool parameters refer to them
        # Valid values a schema cannot express: references to real images, sweepable parameters, no model override.
        image = st.sampled_from(valid_images)
        self.hints: dict[str, st.SearchStrategy[Any]] = {
            "image": image,
            "mask": image,
            "images": st.lists(image, min_size=1, max_size=2),
            "model": st.none(),
            "loras": st.just([]),
            "param": st.sampled_from(["seed", "guidance_scale", "steps", "sampler"]),
            "values": st.lists(st.integers(1, 3), min_size=1, max_size=2),
        }

    def resolve(self, schema: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
        if "$ref" in schema:
            return {**self.defs, **defs}[schema["$ref"].rsplit("/", 1)[-1]]
        return schema

    # ----- anything: wrong types, edges, nasty strings -----

    def any_value(self, depth: int = 0) -> st.SearchStrategy[Any]:
        leaves = st.one_of(
            st.none(), st.booleans(), st.sampled_from(HUGE_INTS), st.sampled_from(ODD_FLOATS), self.strings,
            st.text(max_size=20),
        )
        if depth >= 2:
            return leaves
        return st.one_of(
            leaves,
            st.lists(st.deferred(lambda: self.any_value(depth + 1)), max_size=4),
            st.dictionaries(st.sampled_from(sorted(self.pool) + ["type", "name", "x"]), st.deferred(lambda: self.any_value(depth + 1)), max_size=4),
        )

    def for_schema(self, schema: dict[str, Any], defs: dict[str, Any], depth: int = 0) -> st.SearchStrategy[Any]:
        """Values of the schema's shape, biased to its edges, mixed with values of any other shape."""
        schema = self.resolve(schema, defs)
        wrong = self.any_value(depth + 1)
        if "anyOf" in schema or "oneOf" in schema:
            options = [self.for_schema(option, defs, depth) for option in schema.get("anyOf", schema.get("oneOf", []))]
            return st.one_of(*options, wrong)
        if "enum" in schema:
            return st.one_of(st.sampled_from(schema["enum"]), self.strings, wrong)
        kind = schema.get("type")
        if kind == "string":
            return st.one_of(self.strings, st.text(max_size=40), wrong)
        if kind == "integer":
            low, high = schema.get("minimum", -(2**40)), schema.get("maximum", 2**40)
            edges = [low - 1, low, high, high + 1]
            return st.one_of(st.integers(low, high), st.sampled_from(edges + HUGE_INTS), wrong)
        if kind == "number":
            low, high = schema.get("minimum", -1e6), schema.get("maximum", 1e6)
            return st.one_of(st.floats(low, high), st.sampled_from([low, high, low - 0.001, high + 0.001] + ODD_FLOATS), wrong)
        if kind == "boolean":
            return st.one_of(st.booleans(), wrong)
        if kind == "null":
            return st.none()
        if kind == "array":
            items = self.for_schema(schema.get("items", {}), defs, depth + 1) if depth < 3 else self.any_value(2)
            return st.one_of(st.lists(items, max_size=4), st.lists(items, min_size=9, max_size=40), wrong)
        if kind == "object" or "properties" in schema:
            if depth >= 3:
                return self.any_value(2)
            properties = schema.get("properties") or self.pool
            return st.one_of(self.random_object(properties, schema.get("required", []), defs, depth + 1), wrong)
        return wrong  # {}: anything

    def random_object(self, properties: dict[str, Any], required: list[str], defs: dict[str, Any], depth: int) -> st.SearchStrategy[dict]:
        names = sorted(properties)
        value_strategies = {name: self.for_schema(properties[name], defs, depth) for name in names}

        @st.composite
        def build(draw: st.DrawFn) -> dict[str, Any]:
            chosen = set(draw(st.sets(st.sampled_from(names), max_size=len(names)))) if names else set()
            if draw(st.integers(0, 9)):  # mostly keep what is required
                chosen |= set(required)
            drawn = {name: draw(value_strategies[name]) for name in sorted(chosen)}
            if not draw(st.integers(0, 14)):
                drawn[draw(st.sampled_from(["colour", "__proto__", "prompt ", "../x"]))] = draw(self.any_value(2))
            return drawn

        return build()

    # ----- valid: what a careful caller would send -----

    def valid(self, schema: dict[str, Any], defs: dict[str, Any], name: str | None = None, depth: int = 0) -> st.SearchStrategy[Any]:
        if name in self.hints:
            return self.hints[name]
        schema = self.resolve(schema, defs)
        if "anyOf" in schema or "oneOf" in schema:
            options = schema.get("anyOf", schema.get("oneOf", []))
            return st.one_of(*[self.valid(option, defs, name, depth) for option in options])
        if "enum" in schema:
            return st.sampled_from(schema["enum"])
        kind = schema.get("type")
        if kind == "string":
            return st.text(st.characters(codec="utf-8", exclude_categories=["Cs", "Cc"]), min_size=max(1, schema.get("minLength", 1)), max_size=min(schema.get("maxLength", 30), 30))
        if kind == "integer":
            step = schema.get("multipleOf", 1)
            low = schema.get("minimum", 0)
            high = min(schema.get("maximum", low + 100), low + 100)
            return st.integers(-(-low // step), high // step).map(lambda n: n * step)
        if kind == "number":
            low = schema.get("minimum", 0.0)
            return st.floats(low, min(schema.get("maximum", low + 10.0), low + 10.0))
        if kind == "boolean":
            return st.booleans()
        if kind == "null":
            return st.none()
        if kind == "array":
            return st.lists(self.valid(schema.get("items", {}), defs, None, depth + 1), min_size=schema.get("minItems", 0), max_size=min(schema.get("maxItems", 2), 2))
        if (kind == "object" or "properties" in schema) and depth < 3:
            properties = schema.get("properties")
            if not properties:  # free-form (sweep's base): the arguments of an image tool
                return self.valid_object({"prompt": self.pool["prompt"]}, ["prompt"], defs, depth + 1)
            return self.valid_object(properties, schema.get("required", []), defs, depth + 1)
        return st.none()

    def valid_object(self, properties: dict[str, Any], required: list[str], defs: dict[str, Any], depth: int) -> st.SearchStrategy[dict]:
        names = sorted(properties)
        strategies = {name: self.valid(properties[name], defs, name, depth) for name in names}

        @st.composite
        def build(draw: st.DrawFn) -> dict[str, Any]:
            optional = [name for name in names if name not in required]
            chosen = set(required) | set(draw(st.sets(st.sampled_from(optional), max_size=3)) if optional else set())
            return {name: draw(strategies[name]) for name in sorted(chosen)}

        return build()

    def arguments(self, schema: dict[str, Any]) -> st.SearchStrategy[dict]:
        """Half the time valid arguments with one field replaced by anything; half the time anything at all."""
        properties, required, defs = schema.get("properties", {}), schema.get("required", []), schema.get("$defs", {})

        @st.composite
        def one_broken(draw: st.DrawFn) -> dict[str, Any]:
            arguments = draw(self.valid_object(properties, required, defs, 0))
            if properties and draw(st.booleans()):
                name = draw(st.sampled_from(sorted(properties)))
                arguments[name] = draw(self.for_schema(properties[name], defs, 1))
            return arguments

        return st.one_of(one_broken(), self.random_object(properties, required, defs, 0))


def keep_cheap(value: Any) -> Any:
    """Valid-but-slow values become their cheapest valid form; invalid ones stay as drawn."""
    if isinstance(value, dict):
        out = {key: keep_cheap(item) for key, item in value.items()}
        for key, cap in (("steps", 2), ("max_rounds", 1), ("wait_s", 1.0), ("max_frames", 2)):
            if isinstance(out.get(key), int | float) and not isinstance(out[key], bool) and out[key] > cap:
                out[key] = cap
        if out.get("param") == "steps" and isinstance(out.get("values"), list):
            out["values"] = [min(v, 2) if isinstance(v, int) and not isinstance(v, bool) else v for v in out["values"]]
        return out
    if isinstance(value, list):
        return [keep_cheap(item) for item in value]
    return value


# Failures that are not about one argument: the VLM service, the queue, the machine.
NOT_ABOUT_AN_ARGUMENT = ("unknown parameter", "VLM", "engine busy", "IMGTOOLS_", "out of memory")


def check_result(name: str, parameters: list[str], arguments: dict[str, Any], result: Any) -> None:
    assert result.content, (name, arguments)
    if not result.is_error:
        return
    text = result.content[0].text
    assert "\n" not in text and "Traceback" not in text, (name, text)
    # The SDK answers exactly this when a tool raised something it did not mean to: a crash, not an answer.
    assert text.strip() != f"Error executing tool {name}", (name, arguments)
    detail = text.removeprefix(f"Error executing tool {name}: ")
    assert any(parameter in detail for parameter in parameters) or any(m in detail for m in NOT_ABOUT_AN_ARGUMENT), (
        f"{name}: the error names no parameter: {text}"
    )


def fuzz_tool(name: str, parameters: list[str], arguments_strategy: st.SearchStrategy[dict], call: Any, calls: dict[str, int]) -> Any:
    @hypothesis_settings(
        max_examples=EXAMPLES_PER_TOOL,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example],
    )
    @given(arguments=arguments_strategy)
    def one_call(arguments: dict[str, Any]) -> None:
        calls[name] = calls.get(name, 0) + 1
        started = time.perf_counter()
        result = call(name, arguments)
        if os.environ.get("FUZZ_SHOW"):
            elapsed = time.perf_counter() - started
            print(f"{name} {'ERR' if result.is_error else 'OK '} {elapsed:6.2f}s {result.content[0].text[:140] if result.content else ''}")
        check_result(name, parameters, arguments, result)

    return one_call


@pytest.mark.slow
def test_every_tool_survives_fuzzed_arguments(tiny_sd15: Path, tmp_path: Path) -> None:
    with OpenAILoopback() as vlm:
        run_fuzz(tiny_sd15, tmp_path, vlm)


def run_fuzz(tiny_sd15: Path, tmp_path: Path, vlm: OpenAILoopback) -> None:
    config = Settings(
        model=str(tiny_sd15),
        output_dir=tmp_path / "out",
        device="cpu",
        hf_offline=True,
        max_pixels=MAX_PIXELS,
        max_input_bytes=1024 * 1024,
        max_sweep_cells=4,
        request_timeout_s=60,
        vlm_api_key="test-key",
        vlm_base_url=vlm.base_url,  # a real OpenAI-compatible server on loopback, so VLM tools do real work
    )
    with anyio.from_thread.start_blocking_portal() as portal:
        with portal.wrap_async_context_manager(Client(build_server(config))) as client:
            seed_image = portal.call(partial(client.call_tool, "generate", {"prompt": "fuzz seed", "width": 64, "height": 64, "steps": 1}))
            output_id = seed_image.structured_content["images"][0]["id"]
            tools = portal.call(client.list_tools).tools
            pool: dict[str, dict[str, Any]] = {}
            defs: dict[str, Any] = {}
            for tool in tools:
                pool.update(tool.input_schema.get("properties", {}))
                defs.update(tool.input_schema.get("$defs", {}))
            valid_images = [output_id, f"imgtools://images/{output_id}", "data:image/png;base64," + base64.b64encode(png_bytes((64, 64))).decode()]
            strategies = SchemaStrategies(nasty_strings(tmp_path, output_id), valid_images, pool, defs)
            calls: dict[str, int] = {}

            async def bounded_call(name: str, arguments: dict[str, Any]) -> Any:
                with anyio.fail_after(CALL_LIMIT_S):
                    return await client.call_tool(name, arguments)

            for tool in tools:
                schema = tool.input_schema
                arguments_strategy = strategies.arguments(schema).map(keep_cheap)

                parameters = sorted(schema.get("properties", {}))
                fuzz_tool(tool.name, parameters, arguments_strategy, partial(portal.call, bounded_call), calls)()

            assert set(calls) == {tool.name for tool in tools}
            # Still serving, and still making images.
            after = portal.call(partial(client.call_tool, "generate", {"prompt": "after the fuzz", "width": 64, "height": 64, "steps": 1}))
            assert not after.is_error, after.content
            listed = portal.call(partial(client.read_resource, after.structured_content["images"][0]["uri"]))
            assert listed.contents[0].mime_type == "image/png"


# --- the probe's inputs, on every parameter of every tool ------------------------------------------------------

GENERIC_ERROR = re.compile(r"^Error executing tool [a-z_]+$")
# Two steps: inpaint's default strength (0.99) of one step would leave no step to run.
CHEAP = {"steps": 2, "width": 64, "height": 64, "num_images": 1, "max_rounds": 1}


def schema_kinds(schema: dict[str, Any], defs: dict[str, Any]) -> set[str]:
    """The JSON types a property accepts (through $ref and anyOf), null left out."""
    if "$ref" in schema:
        return schema_kinds(defs.get(schema["$ref"].rsplit("/", 1)[-1], {}), defs)
    if "anyOf" in schema or "oneOf" in schema:
        return set().union(*(schema_kinds(option, defs) for option in schema.get("anyOf", schema.get("oneOf", []))))
    kind = schema.get("type")
    return {kind} - {"null"} if isinstance(kind, str) else set()


def probe_values(name: str, kinds: set[str], bad_files: dict[str, str]) -> list[Any]:
    values: list[Any] = []
    if "string" in kinds:
        values.append("x" * 5000)
    if "integer" in kinds:
        values += [2**63, -(2**63)]
    if "number" in kinds and "integer" not in kinds:
        values += [1e308, -1e308]
    if name in ("model", "detail_model"):
        values += list(bad_files.values())
    if name == "mask_shapes":
        values += [
            [{"type": "rect", "x": 1e308, "y": 0, "width": 1e308, "height": 10}],
            [{"type": "ellipse", "x": 0, "y": 0, "width": 10**30, "height": 10**30}],
            [{"type": "rect", "x": 0.1, "y": 0.1, "width": 1e-300, "height": 1e-300}],
        ]
    return values


def base_arguments(tool: str, output_id: str, properties: dict[str, Any]) -> dict[str, Any]:
    """The cheapest valid call of each tool, so a refusal is about the probed parameter only."""
    arguments: dict[str, Any] = {key: value for key, value in CHEAP.items() if key in properties}
    arguments.update({
        "prompt": "a fox", "goal": "a fox", "image": output_id, "images": [output_id], "video": "clip.mp4",
        "job_id": "no-such-job",
    })
    if tool == "inpaint":
        arguments["mask_shapes"] = [{"type": "rect", "x": 0, "y": 0, "width": 0.5, "height": 0.5}]
    if tool == "sweep":
        arguments.update(base={"prompt": "a fox", "steps": 1, "width": 64, "height": 64}, x={"param": "seed", "values": [1]})
    if tool == "refine":
        arguments["prompt"] = "a fox"
    return {key: value for key, value in arguments.items() if key in properties}


def bad_safetensors(folder: Path) -> dict[str, str]:
    folder.mkdir(parents=True, exist_ok=True)
    huge = folder / "huge-header.safetensors"
    huge.write_bytes(struct.pack("<Q", 2**62) + b"{}")
    header = json.dumps({"w": {"dtype": "F32", "shape": [10**30, 10**30], "data_offsets": [0, 4]}}).encode()
    absurd = folder / "absurd-shape.safetensors"
    absurd.write_bytes(struct.pack("<Q", len(header)) + header + b"\0" * 4)
    return {"huge": str(huge), "absurd": str(absurd)}


@pytest.mark.parametrize("extra", [
    pytest.param({}, id="every-parameter"),
    pytest.param({"sweep": [("x", {"param": "steps", "start": 1, "stop": 1e308, "count": 3})]}, id="sweep-stop"),
])
def test_the_probes_inputs_name_their_parameter_on_every_tool(tiny_sd15: Path, tmp_path: Path,
                                                              caplog: pytest.LogCaptureFixture, extra: dict) -> None:
    """5000-character strings, 2**63 and 1e308 on every parameter, unreadable checkpoints as `model`, overflowing
    `mask_shapes` and an unbounded sweep `stop`: each a one-line error naming its parameter, never the SDK's
    generic "Error executing tool" and never a traceback in the server's log."""
    caplog.set_level(logging.WARNING)
    with OpenAILoopback() as vlm, anyio.from_thread.start_blocking_portal() as portal:
        config = Settings(model=str(tiny_sd15), output_dir=tmp_path / "out", device="cpu", hf_offline=True,
                          max_pixels=MAX_PIXELS, max_sweep_cells=4, vlm_api_key="test-key", vlm_base_url=vlm.base_url)
        with portal.wrap_async_context_manager(Client(build_server(config))) as client:
            made = portal.call(partial(client.call_tool, "generate", {"prompt": "seed", "steps": 1, "width": 64, "height": 64}))
            assert not made.is_error, made.content
            output_id = made.structured_content["images"][0]["id"]
            files = bad_safetensors(tmp_path / "bad")

            async def bounded_call(name: str, arguments: dict[str, Any]) -> Any:
                with anyio.fail_after(CALL_LIMIT_S):
                    return await client.call_tool(name, arguments)

            failures: list[str] = []
            calls = 0
            for tool in portal.call(client.list_tools).tools:
                properties, defs = tool.input_schema.get("properties", {}), tool.input_schema.get("$defs", {})
                base = base_arguments(tool.name, output_id, properties)
                # The pending cases run on their own, so the rest is held to account meanwhile.
                cases = extra.get(tool.name, []) if extra else [
                    (name, value) for name in sorted(properties)
                    for value in probe_values(name, schema_kinds(properties[name], defs), files)
                ]
                for name, value in cases:
                    calls += 1
                    result = portal.call(bounded_call, tool.name, {**base, name: value})
                    text = result.content[0].text if result.content else ""
                    if result.is_error and (GENERIC_ERROR.match(text.strip()) or "\n" in text or name not in text):
                        failures.append(f"{tool.name}.{name}={str(value)[:40]!r}: {text[:160]}")
    tracebacks = [f"{r.name}: {r.getMessage()[:160]}" for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]
    assert calls > (0 if extra else 50)
    assert failures == [], "\n".join(failures)
    assert tracebacks == [], "\n".join(tracebacks)
