"""OpenVINO int8 activations (nncf_w8a8): calibrated on real requests in a background process, then used where the
drift is small; through the MCP client on the tiny SD 1.5 model."""

from __future__ import annotations

import json
import time
from pathlib import Path

import anyio
import numpy as np
import pytest
from mcp import Client
from ov_marks import needs_nncf
from PIL import Image

from imgtools_mcp.config import Settings
from imgtools_mcp.engine.backends import openvino_int8
from imgtools_mcp.engine.device import DeviceFacts, probe
from imgtools_mcp.server import build_server

pytestmark = pytest.mark.anyio

# Four steps, one UNet call each (CFG batches both halves): the first request keeps fewer than MIN_CAPTURED (5)
# inputs, the second starts the calibration.
REQUEST = {"prompt": "a red cube on a table", "width": 64, "height": 64, "steps": 4, "seed": 7, "num_images": 1}
# Mean absolute difference allowed between the int8-activation and the bf16 images of one seed, in 0-255 levels.
# int8 activations err more than int8 weights (tests/test_openvino_int8.py allows 4): each layer's inputs are
# rounded to 256 levels of their calibrated range. Another seed moves the tiny model's image ~43 levels.
W8A8_LEVELS = 12.0



def settings_for(model: Path, tmp_path: Path, cache: Path, quantize: str) -> Settings:
    return Settings(model=str(model), output_dir=tmp_path / "out", device="cpu", hf_offline=True, backend="openvino",
                    cache_dir=cache, quantize=quantize)  # fmt: skip


def pixels(result) -> np.ndarray:
    assert not result.is_error, result.content[0].text
    return np.asarray(Image.open(result.structured_content["images"][0]["path"]).convert("RGB"), dtype=np.int16)


def cpu(*flags: str) -> DeviceFacts:
    return DeviceFacts("cpu", "test CPU", None, 32 * 2**30, 24 * 2**30, True, False, cpu_features=frozenset(flags))


@pytest.mark.parametrize(
    ("setting", "flags", "installed", "enabled", "says"),
    [
        ("auto", ("avx512_vnni",), {"nncf"}, True, "avx512_vnni (int8 dot products"),
        ("auto", ("amx_int8", "avx512_vnni"), {"nncf"}, True, "amx_int8, avx512_vnni"),
        ("auto", ("avx2",), {"nncf"}, False, "no int8 dot-product instructions"),
        ("auto", ("avx512_vnni",), set(), False, "need the nncf package"),
        ("nncf_w8a8", ("avx2",), {"nncf"}, True, "IMGTOOLS_QUANTIZE=nncf_w8a8"),
        ("none", ("amx_int8",), {"nncf"}, False, "IMGTOOLS_QUANTIZE=none"),
        ("nncf_int8", ("amx_int8",), {"nncf"}, False, "IMGTOOLS_QUANTIZE=nncf_int8"),
        ("int8", ("amx_int8",), {"nncf"}, False, "IMGTOOLS_QUANTIZE=int8"),
    ],
)
def test_where_int8_activations_are_chosen(setting: str, flags: tuple, installed: set, enabled: bool, says: str) -> None:
    chosen = openvino_int8.choose(setting, cpu(*flags), installed)
    assert chosen.value is enabled and says in chosen.reason, chosen


@pytest.mark.parametrize(
    ("drift", "explicit", "used", "says"),
    [
        (42.0, False, True, "auto: 8 steps from the same noise ended 42.0 dB PSNR from bf16 (at least 35 dB)"),
        (35.0, False, True, "at least 35 dB"),
        (34.9, False, False, "below 35 dB; the UNet stays in bf16"),
        (12.0, True, True, "IMGTOOLS_QUANTIZE=nncf_w8a8; 8 steps from the same noise ended 12.0 dB"),
    ],
)
def test_the_measured_drift_decides(drift: float, explicit: bool, used: bool, says: str) -> None:
    chosen = openvino_int8.decide(drift, explicit=explicit)
    assert chosen.value is used and says in chosen.reason, chosen


def test_calibration_keeps_inputs_spread_over_the_steps() -> None:
    int8 = openvino_int8.Int8Activations(explicit=False, folder=Path("unused"))
    for step in range(50):
        int8.keep({"timestep": np.asarray([float(step)])}, guided=True)
        if step + 1 >= openvino_int8.MIN_CAPTURED:  # once enough were kept, thinning never leaves too few
            assert len(int8.captured) >= openvino_int8.MIN_CAPTURED
    kept = [float(f["timestep"][0]) for f in int8.captured]
    assert openvino_int8.MIN_CAPTURED <= len(kept) <= openvino_int8.MAX_KEPT and kept[0] == 0.0 and kept[-1] >= 40, kept
    assert kept == sorted(kept)
    calibration, held_out = openvino_int8.split_captured(int8.captured)
    assert len(held_out) == 1 and held_out[0] not in calibration and len(calibration) == len(kept) - 1


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_the_clean_latents_a_unet_call_predicts(prediction_type: str) -> None:
    rng = np.random.default_rng(0)
    alphas = np.linspace(0.9991, 0.0047, 1000)  # SD's alphas_cumprod falls from ~1 to ~0.005
    clean, noise = rng.standard_normal((1, 4, 8, 8)), rng.standard_normal((1, 4, 8, 8))
    t, a = 500, alphas[500]
    sample = np.sqrt(a) * clean + np.sqrt(1 - a) * noise
    velocity = np.sqrt(a) * noise - np.sqrt(1 - a) * clean
    exact = noise if prediction_type == "epsilon" else velocity
    # CFG's batch: the unconditional half predicts something else; the guided combination is the exact one.
    uncond = exact + rng.standard_normal(exact.shape)
    cond = uncond + (exact - uncond) / openvino_int8.DRIFT_GUIDANCE
    feeds = {"sample": np.concatenate([sample, sample]).astype(np.float32), "timestep": np.asarray([float(t)], np.float32)}
    got = openvino_int8.clean_latents(feeds, np.concatenate([uncond, cond]), alphas, prediction_type, guided=True)
    assert got is not None and got.shape == clean.shape and np.abs(got - clean).max() < 1e-4
    noisy = {**feeds, "timestep": np.asarray([999.0], np.float32)}  # a = 0.005: no picture's latents yet
    assert openvino_int8.clean_latents(noisy, np.concatenate([uncond, cond]), alphas, prediction_type, guided=True) is None
    # Two images without guidance are an even batch too: each is its own picture, not CFG's halves.
    other = rng.standard_normal((1, 4, 8, 8))
    samples = np.concatenate([sample, np.sqrt(a) * other + np.sqrt(1 - a) * noise]).astype(np.float32)
    predictions = np.concatenate([exact, exact if prediction_type == "epsilon" else np.sqrt(a) * noise - np.sqrt(1 - a) * other])
    both = openvino_int8.clean_latents({**feeds, "sample": samples}, predictions, alphas, prediction_type, guided=False)
    assert both is not None and both.shape == (2, 4, 8, 8)
    assert np.abs(both - np.concatenate([clean, other])).max() < 1e-4


@pytest.mark.parametrize(
    ("drift", "explicit", "used", "says"),
    [
        (39.5, False, True, "auto: the drift run's image through it ended 39.5 dB pixel PSNR from the bf16 decoder's (at least 35 dB)"),
        (33.2, False, False, "below 35 dB; the VAE decoder stays in bf16"),
        (20.0, True, True, "IMGTOOLS_QUANTIZE=nncf_w8a8; the drift run's image"),
    ],
)
def test_the_decoder_s_own_drift_decides_for_it(drift: float, explicit: bool, used: bool, says: str) -> None:
    chosen = openvino_int8.decide_decoder(drift, explicit=explicit)
    assert chosen.value is used and says in chosen.reason, chosen


def test_too_little_free_memory_declines_under_auto(tiny_sd15: Path, tmp_path: Path) -> None:
    from diffusers import UNet2DConditionModel

    unet = UNet2DConditionModel.from_pretrained(tiny_sd15 / "unet")
    int8 = openvino_int8.Int8Activations(explicit=False, folder=tmp_path / "unet-x-w8a8")
    int8.captured = [{}] * openvino_int8.MIN_CAPTURED
    openvino_int8.start(int8, unet, sdxl=False, bf16_ir=tmp_path, precision="bf16", free_memory=0,
                        scheduler={"class": "EulerDiscreteScheduler", "config": {}})
    assert int8.state == "declined" and "GiB free" in int8.reason and "stays in bf16" in int8.reason, int8.reason
    assert not list(tmp_path.iterdir())  # nothing saved, no child started


@needs_nncf
async def test_each_kept_input_says_whether_its_batch_is_cfg(tiny_sd15: Path, tmp_path: Path) -> None:
    from imgtools_mcp.engine.base import build_engine

    settings = settings_for(tiny_sd15, tmp_path, tmp_path / "cache", "nncf_w8a8")
    engine = build_engine(settings)
    async with Client(build_server(settings, engine)) as client:
        for extra in ({"num_images": 2, "guidance_scale": 1.0}, {"guidance_scale": 5.0}):  # both UNet batches are 2
            result = await client.call_tool("generate", {**REQUEST, "steps": 2, **extra})
            assert not result.is_error, result.content[0].text
        (model,) = engine.cache.loaded()
        int8 = engine.backends.get("openvino").state(model).int8
        kept = [(c["sample"].shape[0], bool(c[openvino_int8.GUIDED])) for c in int8.captured]
    assert kept == [(2, False), (2, False), (2, True), (2, True)], kept  # fewer than MIN_CAPTURED: no calibration yet
    assert int8.state == "calibrating"
    feeds, guided = openvino_int8.unet_inputs(int8.captured[0])
    assert openvino_int8.GUIDED not in feeds and set(feeds) == {"sample", "timestep", "encoder_hidden_states"}


async def wait_for_calibration(client: Client, timeout_s: float = 400.0) -> dict:
    deadline = time.monotonic() + timeout_s
    while True:
        status = (await client.call_tool("engine_status", {})).structured_content
        (loaded,) = status["loaded_models"]
        info = loaded["quantization"]
        if info["int8_activations"] not in ("calibrating", "quantizing") or time.monotonic() > deadline:
            return info
        await anyio.sleep(1.0)


@needs_nncf
async def test_int8_activations_calibrate_in_the_background_then_run(tiny_sd15: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    async with Client(build_server(settings_for(tiny_sd15, tmp_path / "bf16", cache, "none"))) as client:
        plain = await client.call_tool("generate", REQUEST)
    async with Client(build_server(settings_for(tiny_sd15, tmp_path / "w8a8", cache, "nncf_w8a8"))) as client:
        first = await client.call_tool("generate", REQUEST)
        second = await client.call_tool("generate", REQUEST)
        info = await wait_for_calibration(client)
        third = await client.call_tool("generate", REQUEST)
        cached = await client.call_tool("generate", {**REQUEST, "speed": "balanced"})  # deep features from the int8 IR

    # Calibrating: served by the bf16 IR (same pixels as the plain run), saying what it is doing.
    for result in (first, second):
        assert np.array_equal(pixels(result), pixels(plain))
    q1, q2 = (r.structured_content["engine"]["quantization"] for r in (first, second))
    assert q1["method"] == "none" and q1["int8_activations"] == "calibrating", q1
    assert f"4 of the {openvino_int8.MIN_CAPTURED} UNet inputs" in q1["reason"], q1
    assert q2["method"] == "none" and q2["int8_activations"] == "quantizing" and "background" in q2["reason"], q2

    assert info["int8_activations"] == "ready", info
    assert info["method"] == "nncf_w8a8" and info["drift_psnr_db"] > 20, info  # the tiny model measured ~40 dB

    engine = third.structured_content["engine"]
    assert engine["backend_components"]["unet"] == "openvino", engine
    used = engine["quantization"]
    assert used["method"] == "nncf_w8a8" and used["components"] == ["unet", "vae_decoder"], used
    assert used["reason"].startswith("IMGTOOLS_QUANTIZE=nncf_w8a8; 8 steps from the same noise ended"), used
    decoder = used["vae_decoder"]  # quantized in the same child; asked for by name, used whatever its drift
    assert decoder["state"] == "ready" and decoder["drift_psnr_db"] > 20, decoder  # the tiny decoder measured ~33 dB
    assert decoder["reason"].startswith("IMGTOOLS_QUANTIZE=nncf_w8a8; the drift run's image through it ended"), decoder
    assert 0.2 * used["bytes_before"] < used["bytes_after"] < 0.6 * used["bytes_before"], used  # int8 weights too
    a, b = pixels(plain), pixels(third)
    assert not np.array_equal(a, b)  # the int8 UNet really ran
    assert np.abs(a - b).mean() < W8A8_LEVELS, np.abs(a - b).mean()
    step_cache = cached.structured_content["engine"]["step_cache"]
    assert cached.structured_content["engine"]["quantization"]["method"] == "nncf_w8a8"
    assert (step_cache["method"], step_cache["computed"], step_cache["reused"]) == ("deep_cache", 2, 2), step_cache
    assert 0 < np.abs(pixels(cached) - b).mean() < W8A8_LEVELS

    (folder,) = cache.glob("openvino/unet-*-w8a8")
    meta = json.loads((folder / "meta.json").read_text())
    assert meta["activations"] == "nncf_w8a8" and meta["calibration_inputs"] == 2 * 4 - 1  # two requests' steps, one held out
    assert meta["drift_psnr_db"] == pytest.approx(used["drift_psnr_db"], abs=0.01)
    assert meta["drift_steps"] == openvino_int8.DRIFT_STEPS and meta["scheduler"] == "EulerDiscreteScheduler", meta  # the model's own
    (decoder_folder,) = cache.glob("openvino/vae_decoder-*-w8a8")
    decoder_meta = json.loads((decoder_folder / "meta.json").read_text())
    # Calibrated on the clean latents the UNet predicts at the kept steps past the noisiest (t 999 is not one).
    assert 1 <= decoder_meta["calibration_inputs"] < meta["calibration_inputs"], decoder_meta
    assert decoder_meta["drift_psnr_db"] == pytest.approx(decoder["drift_psnr_db"], abs=0.01)
    assert meta["vae_decoder"]["drift_psnr_db"] == decoder_meta["drift_psnr_db"]
    assert not list(cache.glob("openvino/*.work-*")), "the calibration's work folder is removed"

    # A restart under auto reads the IR and its drift from disk, and decides from the drift alone (where auto takes
    # int8 activations on this CPU at all: it needs VNNI or AMX).
    from imgtools_mcp.engine.quantize import installed_packages

    if not openvino_int8.choose("auto", probe("cpu"), installed_packages()).value:
        return
    expected = openvino_int8.decide(meta["drift_psnr_db"], explicit=False)
    expected_decoder = openvino_int8.decide_decoder(decoder_meta["drift_psnr_db"], explicit=False)
    from imgtools_mcp.testing.files import make_test_lora

    loras = tmp_path / "loras"
    make_test_lora(tiny_sd15, loras / "style.safetensors", seed=1)
    restart = settings_for(tiny_sd15, tmp_path / "auto", cache, "auto").model_copy(update={"lora_dirs": [loras]})
    async with Client(build_server(restart)) as client:
        restarted = await client.call_tool("generate", REQUEST)
        wider = await client.call_tool("generate", {**REQUEST, "width": 128})  # a shape it was not calibrated at
        # A LoRA request runs its UNet on torch, with the model's own weights, and says so.
        lora = await client.call_tool("generate", {**REQUEST, "loras": [{"name": "style", "weight": 0.8}]})
    again = restarted.structured_content["engine"]["quantization"]
    assert again["reason"].startswith(expected.reason) and "read from disk" in again["reason"], again
    assert again["vae_decoder"]["reason"].startswith(expected_decoder.reason), again
    if expected.value:
        assert again["method"] == "nncf_w8a8"
        if expected_decoder.value:  # both as under nncf_w8a8: the same pixels
            assert again["components"] == ["unet", "vae_decoder"] and np.array_equal(pixels(restarted), b)
        else:  # the int8 UNet with the bf16 decoder
            assert again["components"] == ["unet"] and again["vae_decoder"]["state"] == "declined", again
            assert not np.array_equal(pixels(restarted), b) and np.abs(pixels(restarted) - b).mean() < W8A8_LEVELS
        assert lora.structured_content["engine"]["backend_components"]["unet"] == "torch"
        on_torch = lora.structured_content["engine"]["quantization"]
        assert on_torch["method"] == "none" and "ran on torch" in on_torch["reason"], on_torch
        assert wider.structured_content["engine"]["quantization"]["method"] == "nncf_w8a8" and pixels(wider).shape[1] == 128
    else:
        assert again["int8_activations"] == "declined" and np.array_equal(pixels(restarted), a)


@needs_nncf
def test_doctor_says_whether_openvino_unets_would_get_int8_activations(tiny_sd15: Path, tmp_path: Path) -> None:
    from imgtools_mcp.doctor import collect
    from imgtools_mcp.engine.quantize import installed_packages

    for setting in ("auto", "none", "nncf_w8a8"):
        report = collect(settings_for(tiny_sd15, tmp_path, tmp_path / "cache", setting))["quantization"]
        expected = openvino_int8.choose(setting, probe("cpu"), installed_packages())
        assert report["int8_activations"] == {"enabled": expected.value, "reason": expected.reason}, report
        assert report["methods"]["nncf_w8a8"] == {"available": True}
    assert "nncf_w8a8" not in {entry["method"] for entry in report["levels"].values()}  # not a memory rung


def test_a_failed_calibration_says_why_and_leaves_bf16_serving(tmp_path: Path) -> None:
    work = tmp_path / "unet-x-w8a8.work-1"
    work.mkdir()  # no job in it: the child fails as a broken save would make it
    int8 = openvino_int8.Int8Activations(explicit=True, folder=tmp_path / "unet-x-w8a8", state="quantizing")
    openvino_int8._run_child(int8, work)
    assert int8.state == "failed" and "FileNotFoundError" in int8.reason and "stays in bf16" in int8.reason, int8.reason
    assert int8.as_dict()["method"] == "none"
    assert not work.exists() and not int8.folder.exists()


def test_a_decoder_that_did_not_quantize_stays_in_bf16_beside_the_int8_unet(tmp_path: Path) -> None:
    folder = tmp_path / "unet-x-w8a8"
    folder.mkdir()
    error = "its int8 calibration failed (ValueError: no kept step was past the noisiest)"
    (folder / "meta.json").write_text(json.dumps({"drift_psnr_db": 40.0, "decoder_error": error}))
    int8 = openvino_int8.Int8Activations(explicit=False, folder=folder, decoder_folder=tmp_path / "vae_decoder-x-w8a8")
    int8.finished()
    info = int8.as_dict()
    assert info["int8_activations"] == "ready" and info["components"] == ["unet"], info
    assert info["vae_decoder"] == {"state": "none", "reason": f"the VAE decoder stays in bf16: {error}"}, info
