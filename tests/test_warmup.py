"""IMGTOOLS_WARMUP: the default model is loaded and run once at its native size when the server starts, so the
first request neither loads nor compiles; when it runs, why, and what it leaves (no images, no calibration
inputs), through the MCP client on the tiny models."""

from __future__ import annotations

import time
from pathlib import Path

import anyio
import pytest
from mcp import Client

from imgtools_mcp.config import Settings
from imgtools_mcp.doctor import collect
from imgtools_mcp.engine.backends import openvino_int8
from imgtools_mcp.engine.warmup import WARMUP_STEPS, plan_warmup
from imgtools_mcp.server import build_server

from ov_marks import needs_nncf
from test_backends import needs_openvino

pytestmark = pytest.mark.anyio

FIRST = {"prompt": "a red cube on a table", "steps": 2, "seed": 3}  # no size: the family's native one, like the warm-up's


@pytest.mark.parametrize(
    ("setting", "compile_mode", "backend", "engine", "enabled", "says"),
    [
        ("auto", "cudagraphs", "torch", "local", True, "compiles the denoiser (cudagraphs) once per size"),
        ("auto", "regional", "torch", "local", True, "(regional)"),
        ("auto", "off", "torch", "local", False, "compiles nothing here"),
        ("auto", "off", "openvino", "local", False, "a few seconds' compile of its shape"),
        ("on", "off", "openvino", "local", True, "IMGTOOLS_WARMUP=on"),
        ("off", "cudagraphs", "torch", "local", False, "IMGTOOLS_WARMUP=off"),
        ("on", "cudagraphs", "torch", "ray", False, "each engine replica loads its models itself"),
    ],
)
def test_when_the_server_warms_up(setting: str, compile_mode: str, backend: str, engine: str, enabled: bool, says: str) -> None:
    choice = plan_warmup(setting, compile_mode=compile_mode, backend=backend, engine=engine)
    assert choice.value is enabled
    assert says in choice.reason


def test_the_setting_is_checked() -> None:
    assert Settings(warmup="on").warmup == "on"
    with pytest.raises(ValueError, match="warmup"):
        Settings(warmup="sometimes")


async def wait_for_warmup(client, timeout_s: float = 300.0) -> dict:
    deadline = time.monotonic() + timeout_s
    while True:
        status = (await client.call_tool("engine_status", {})).structured_content
        if status["warmup"]["state"] not in ("pending", "running"):
            return status
        assert time.monotonic() < deadline, f"the warm-up did not end in {timeout_s:g} s: {status['warmup']}"
        await anyio.sleep(0.2)


def warm_settings(model: Path, tmp_path: Path, **extra) -> Settings:
    return Settings(model=str(model), output_dir=tmp_path / "out", device="cpu", hf_offline=True, warmup="on", **extra)


async def test_the_default_model_is_loaded_and_run_before_the_first_request(tiny_sd15: Path, tmp_path: Path) -> None:
    async with Client(build_server(warm_settings(tiny_sd15, tmp_path))) as client:
        status = await wait_for_warmup(client)
        warmup = status["warmup"]
        assert warmup["state"] == "ready", warmup
        assert warmup["model"] == tiny_sd15.name and warmup["size"] == "64x64", warmup
        assert warmup["timings"]["load_s"] > 0  # the load happened here, not in the first request
        assert [m["name"] for m in status["loaded_models"]] == [tiny_sd15.name]
        text = (await client.call_tool("engine_status", {})).content[0].text
        assert f"warm-up ready: {tiny_sd15.name} loaded and run at 64x64" in text

        first = await client.call_tool("generate", FIRST)
        assert not first.is_error, first.content[0].text
        assert first.structured_content["timings"]["load_s"] == 0
        assert first.structured_content["images"][0]["width"] == 64
    # The warm-up's images are not outputs: only the request's image was written.
    assert len(list((tmp_path / "out").rglob("*.png"))) == 1


async def test_a_request_that_arrives_during_the_warm_up_waits_for_it(tiny_sd15: Path, tmp_path: Path) -> None:
    async with Client(build_server(warm_settings(tiny_sd15, tmp_path))) as client:
        first = await client.call_tool("generate", {**FIRST, "width": 96, "height": 96})
        assert not first.is_error, first.content[0].text
        status = await wait_for_warmup(client)
        assert status["warmup"]["state"] == "ready", status["warmup"]
        assert len(status["loaded_models"]) == 1  # loaded once, by whichever reached the device first


async def test_a_default_model_not_on_disk_is_not_downloaded_at_start(tiny_sd15: Path, tmp_path: Path) -> None:
    settings = Settings(model="example-owner/not-downloaded", output_dir=tmp_path / "out", device="cpu",
                        hf_offline=True, warmup="on")  # fmt: skip
    async with Client(build_server(settings)) as client:
        status = await wait_for_warmup(client)
        assert status["warmup"]["state"] == "skipped", status["warmup"]
        assert "example-owner/not-downloaded" in status["warmup"]["detail"]
        assert status["loaded_models"] == []
        served = await client.call_tool("generate", {**FIRST, "model": str(tiny_sd15)})  # the server serves on
        assert not served.is_error, served.content[0].text


async def test_an_inpainting_default_model_is_skipped_with_the_reason(tiny_sd15_inpaint: Path, tmp_path: Path) -> None:
    async with Client(build_server(warm_settings(tiny_sd15_inpaint, tmp_path))) as client:
        status = await wait_for_warmup(client)
        assert status["warmup"]["state"] == "skipped"
        assert "inpainting checkpoint" in status["warmup"]["detail"]


async def test_off_leaves_the_load_to_the_first_request(tiny_sd15: Path, tmp_path: Path) -> None:
    settings = Settings(model=str(tiny_sd15), output_dir=tmp_path / "out", device="cpu", hf_offline=True, warmup="off")
    async with Client(build_server(settings)) as client:
        status = (await client.call_tool("engine_status", {})).structured_content
        assert status["warmup"] == {"enabled": False, "reason": status["warmup"]["reason"], "state": "off"}
        assert status["loaded_models"] == []
        first = await client.call_tool("generate", FIRST)
        assert first.structured_content["timings"]["load_s"] > 0


@needs_openvino
async def test_openvino_converts_and_compiles_the_native_shape_during_the_warm_up(tiny_sd15: Path, tmp_path: Path) -> None:
    settings = warm_settings(tiny_sd15, tmp_path, backend="openvino", cache_dir=tmp_path / "cache", quantize="none")
    async with Client(build_server(settings)) as client:
        warmup = (await wait_for_warmup(client))["warmup"]
        assert warmup["state"] == "ready", warmup
        assert "unet: converted to openvino" in warmup["detail"], warmup
        first = await client.call_tool("generate", FIRST)
        engine = first.structured_content["engine"]
        assert engine["backend_components"] == {"unet": "openvino", "vae_decoder": "openvino"}
        # Nothing was converted or compiled for the first request: the warm-up compiled its shape.
        assert "backend_notes" not in engine, engine["backend_notes"]
        other = await client.call_tool("generate", {**FIRST, "num_images": 2})  # another shape still compiles
        assert any("compiled for sample 4x4x32x32" in n for n in other.structured_content["engine"]["backend_notes"])


@needs_nncf
async def test_the_warm_up_keeps_no_int8_calibration_inputs(tiny_sd15: Path, tmp_path: Path) -> None:
    settings = warm_settings(tiny_sd15, tmp_path, backend="openvino", cache_dir=tmp_path / "cache", quantize="nncf_w8a8")
    assert WARMUP_STEPS + FIRST["steps"] >= openvino_int8.MIN_CAPTURED  # kept, the two would start a calibration
    async with Client(build_server(settings)) as client:
        assert (await wait_for_warmup(client))["warmup"]["state"] == "ready"
        first = await client.call_tool("generate", FIRST)
        quantization = first.structured_content["engine"]["quantization"]
        assert quantization["int8_activations"] == "calibrating", quantization
        assert f"{FIRST['steps']} of the {openvino_int8.MIN_CAPTURED} UNet inputs" in quantization["reason"], quantization


async def wait_for_later(client, count: int, timeout_s: float = 120.0) -> dict:
    """engine_status once `count` warm-ups after load have ended."""
    deadline = time.monotonic() + timeout_s
    while True:
        status = (await client.call_tool("engine_status", {})).structured_content
        later = status["warmup"].get("later", [])
        if len(later) >= count and all(entry["state"] not in ("pending", "running") for entry in later):
            return status
        assert time.monotonic() < deadline, f"{count} warm-up(s) after load did not end in {timeout_s:g} s: {status['warmup']}"
        await anyio.sleep(0.2)


async def test_a_model_a_request_loads_later_runs_its_native_size_in_the_background(tiny_sd15: Path, tiny_sdxl: Path,
                                                                                    tmp_path: Path) -> None:  # fmt: skip
    settings = Settings(model="example-owner/not-downloaded", output_dir=tmp_path / "out", device="cpu",
                        hf_offline=True, warmup="on")  # fmt: skip
    async with Client(build_server(settings)) as client:
        assert (await wait_for_warmup(client))["warmup"]["state"] == "skipped"
        # Loaded at its native size: that request ran the shape, so nothing is left to warm up.
        native = await client.call_tool("generate", {**FIRST, "model": str(tiny_sd15)})
        assert native.structured_content["timings"]["load_s"] > 0
        # Loaded at another size: the native one runs once the device is idle.
        other = await client.call_tool("generate", {**FIRST, "model": str(tiny_sdxl), "width": 96, "height": 96})
        assert not other.is_error, other.content[0].text
        assert other.structured_content["timings"]["load_s"] > 0
        status = await wait_for_later(client, 1)
        (later,) = status["warmup"]["later"]
        assert later["state"] == "ready" and later["model"] == tiny_sdxl.name and later["size"] == "64x64", later
        assert later["timings"]["load_s"] == 0  # it ran on the loaded model; a warm-up never loads one
        text = (await client.call_tool("engine_status", {})).content[0].text
        assert f"warm-up after load ready: {tiny_sdxl.name} run at 64x64 in the background after its load" in text
        again = await client.call_tool("generate", {**FIRST, "model": str(tiny_sdxl)})
        assert again.structured_content["timings"]["load_s"] == 0
        await anyio.sleep(0.5)
        assert len((await client.call_tool("engine_status", {})).structured_content["warmup"]["later"]) == 1
        assert sorted(path.name for path in (tmp_path / "out").rglob("*.png")) == sorted(
            Path(image["path"]).name for result in (native, other, again) for image in result.structured_content["images"]
        )  # the warm-up's images are not kept


@needs_openvino
async def test_on_openvino_a_model_loaded_later_keeps_the_shape_its_request_compiled(tiny_sd15: Path, tmp_path: Path) -> None:
    settings = Settings(model="example-owner/not-downloaded", output_dir=tmp_path / "out", device="cpu", hf_offline=True,
                        warmup="on", backend="openvino", cache_dir=tmp_path / "cache", quantize="none")  # fmt: skip
    async with Client(build_server(settings)) as client:
        await wait_for_warmup(client)
        first = await client.call_tool("generate", {**FIRST, "model": str(tiny_sd15), "width": 96, "height": 96})
        assert any("converted to openvino" in n for n in first.structured_content["engine"]["backend_notes"])
        # OpenVINO keeps one compiled UNet shape per model: the native size's run would only trade 96² for 64².
        (later,) = (await wait_for_later(client, 1))["warmup"]["later"]
        assert later["state"] == "skipped" and later["size"] == "64x64", later
        assert "OpenVINO keeps 1 compiled denoiser shape(s) per model: compiling 64x64 would replace" in later["detail"]
        again = await client.call_tool("generate", {**FIRST, "model": str(tiny_sd15), "width": 96, "height": 96})
        engine = again.structured_content["engine"]
        assert engine["backend_components"]["unet"] == "openvino"
        assert "backend_notes" not in engine, engine["backend_notes"]  # 96² is still compiled: nothing to do again


def test_doctor_says_whether_the_server_would_warm_up(tiny_sd15: Path, tmp_path: Path) -> None:
    report = collect(Settings(model=str(tiny_sd15), output_dir=tmp_path / "out", device="cpu", warmup="on"))
    assert report["warmup"] == {"enabled": True, "reason": plan_warmup("on", compile_mode="off", backend="torch").reason}
    report = collect(Settings(model=str(tiny_sd15), output_dir=tmp_path / "out", device="cpu", warmup="auto"))
    assert report["warmup"]["enabled"] is False and "IMGTOOLS_WARMUP=auto" in report["warmup"]["reason"]
