"""`list_models`, `engine_status`, single-file checkpoints offline, and switching models within a memory budget."""

from __future__ import annotations

import gc
import hashlib
import json
import os
from pathlib import Path

import anyio
import numpy as np
import pytest
import torch
from mcp import Client
from PIL import Image
from safetensors.torch import save_file

from imgtools_mcp.config import Settings
from imgtools_mcp.testing.files import make_test_checkpoint, make_test_lora
from imgtools_mcp.server import build_server

pytestmark = pytest.mark.anyio

SMALL = {"prompt": "a red barn", "width": 64, "height": 64, "steps": 2, "seed": 5}
HUB_REPO = "imgtools-test/tiny-hub-sd15"


def write_hf_cache(cache: Path, repo_id: str, folder: Path) -> Path:
    """A pipeline in a HuggingFace cache as huggingface_hub lays it out: blobs, a snapshot of links, refs/main."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    commit = hashlib.sha1(repo_id.encode()).hexdigest()
    snapshot = repo / "snapshots" / commit
    (repo / "blobs").mkdir(parents=True)
    for file in sorted(p for p in folder.rglob("*") if p.is_file()):
        data = file.read_bytes()
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        link = snapshot / file.relative_to(folder)
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    return snapshot


@pytest.fixture(scope="session")
def library(tmp_path_factory: pytest.TempPathFactory, tiny_models: dict[str, Path]) -> dict[str, Path]:
    """A model folder (linked diffusers folders, a single-file checkpoint, a stray file), a LoRA folder, an HF cache."""
    root = tmp_path_factory.mktemp("library")
    models = root / "models"
    (models / "sd").mkdir(parents=True)
    (models / "tiny-sd15").symlink_to(tiny_models["sd15"], target_is_directory=True)
    (models / "xl" ).mkdir()
    (models / "xl" / "tiny-sdxl").symlink_to(tiny_models["sdxl"], target_is_directory=True)
    make_test_checkpoint(tiny_models["sd15"], models / "sd" / "tiny-single.safetensors")
    save_file({"vae.weight": torch.zeros(2, 2)}, str(models / "sd" / "not-a-model.safetensors"))
    (models / "notes.txt").write_text("not a model")
    loras = root / "loras"
    make_test_lora(tiny_models["sd15"], loras / "tiny_style.safetensors")
    cache = root / "hf-cache"
    write_hf_cache(cache, HUB_REPO, tiny_models["sd15"])
    # A non-pipeline repo (no model_index.json) must not be listed.
    other = tmp_path_factory.mktemp("other-repo")
    (other / "config.json").write_text("{}")
    write_hf_cache(cache, "someone/text-model", other)
    return {"models": models, "loras": loras, "cache": cache, "root": root}


@pytest.fixture
def library_settings(tmp_path: Path, tiny_sd15: Path, library: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> Settings:
    monkeypatch.setenv("HF_HUB_CACHE", str(library["cache"]))
    return Settings(
        model=str(tiny_sd15),
        output_dir=tmp_path / "out",
        device="cpu",
        hf_offline=True,
        model_dirs=[library["models"]],
        lora_dirs=[library["loras"]],
    )


def pixels(result) -> np.ndarray:
    assert not result.is_error, result.content[0].text
    return np.asarray(Image.open(result.structured_content["images"][0]["path"]).convert("RGB"), dtype=np.int16)


def live_tensor_bytes() -> int:
    """Bytes held by every live tensor's storage, each storage counted once."""
    gc.collect()
    storages = {}
    for obj in gc.get_objects():
        if isinstance(obj, torch.Tensor) and obj.device.type != "meta":
            storage = obj.untyped_storage()
            storages[storage.data_ptr()] = storage.nbytes()
    return sum(storages.values())


async def test_list_models_finds_folders_checkpoints_cache_and_loras(library_settings: Settings, tiny_sd15: Path) -> None:
    async with Client(build_server(library_settings)) as client:
        tools = {tool.name: tool for tool in (await client.list_tools()).tools}
        before = await client.call_tool("list_models", {})
        assert not (await client.call_tool("generate", SMALL)).is_error
        after = await client.call_tool("list_models", {})
        only_xl = await client.call_tool("list_models", {"family": "sdxl"})
    for name in ("list_models", "engine_status"):
        assert tools[name].annotations.read_only_hint is True and tools[name].output_schema is not None
    assert not before.is_error, before.content[0].text
    listing = before.structured_content
    models = {entry["model"]: entry for entry in listing["models"]}
    assert set(models) == {"tiny-sd15", "xl/tiny-sdxl", "sd/tiny-single.safetensors", HUB_REPO}
    assert (models["tiny-sd15"]["kind"], models["tiny-sd15"]["family"]) == ("folder", "sd1")
    assert (models["xl/tiny-sdxl"]["kind"], models["xl/tiny-sdxl"]["family"]) == ("folder", "sdxl")
    assert (models["sd/tiny-single.safetensors"]["kind"], models["sd/tiny-single.safetensors"]["family"]) == ("file", "sd1")
    assert (models[HUB_REPO]["kind"], models[HUB_REPO]["family"]) == ("hub", "sd1")
    assert all(entry["size_bytes"] > 1_000_000 for entry in models.values())
    assert models["tiny-sd15"]["default"] and not models[HUB_REPO]["default"]
    assert not any(entry["loaded"] for entry in models.values())
    assert [l["name"] for l in listing["loras"]] == ["tiny_style"]
    assert listing["loras"][0]["rank"] == 4 and listing["loras"][0]["components"] == ["unet"]
    assert any("not-a-model.safetensors" in line for line in listing["skipped"])
    assert "tiny-sd15" in before.content[0].text and "tiny_style" in before.content[0].text
    # After a generation the default model shows as loaded, on the engine's device.
    loaded = {e["model"]: e for e in after.structured_content["models"]}
    assert loaded["tiny-sd15"]["loaded"] and loaded["tiny-sd15"]["device"] == "cpu"
    assert not loaded[HUB_REPO]["loaded"]
    assert [e["model"] for e in only_xl.structured_content["models"]] == ["xl/tiny-sdxl"]


async def test_every_listed_model_loads_by_its_listed_name_offline(library_settings: Settings) -> None:
    async with Client(build_server(library_settings)) as client:
        listing = (await client.call_tool("list_models", {})).structured_content
        images = {}
        for entry in listing["models"]:
            result = await client.call_tool("generate", {**SMALL, "model": entry["model"]})
            images[entry["model"]] = pixels(result)
            assert result.structured_content["model"]["family"] == entry["family"]
    # The checkpoint and the cached copy hold the same weights as the folder: the same seed gives the same image.
    assert np.array_equal(images["sd/tiny-single.safetensors"], images["tiny-sd15"])
    assert np.array_equal(images[HUB_REPO], images["tiny-sd15"])


async def test_single_file_without_a_local_config_is_a_clear_error(
    tmp_path: Path, library: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    lonely = tmp_path / "lonely"
    lonely.mkdir()
    checkpoint = lonely / "only-a-checkpoint.safetensors"
    checkpoint.symlink_to(library["models"] / "sd" / "tiny-single.safetensors")
    settings = Settings(model=str(checkpoint), output_dir=tmp_path / "out", device="cpu", hf_offline=True, model_dirs=[lonely])
    async with Client(build_server(settings)) as client:
        result = await client.call_tool("generate", SMALL)
        assert result.is_error
        text = result.content[0].text
        assert text.count("\n") == 0 and "model" in text and "IMGTOOLS_MODEL_DIRS" in text and "hf download" in text
        assert "only-a-checkpoint" in text
        # The server keeps serving; a model that needs no config still works.
        listing = await client.call_tool("list_models", {})
        assert not listing.is_error


async def test_switching_models_under_a_small_budget_evicts_and_frees(
    tmp_path: Path, tiny_models: dict[str, Path]
) -> None:
    sd15, sdxl = str(tiny_models["sd15"]), str(tiny_models["sdxl"])
    # Room for one tiny model's weights but not two.
    settings = Settings(model=sd15, output_dir=tmp_path / "out", device="cpu", hf_offline=True, model_cache_bytes="3MiB")
    async with Client(build_server(settings)) as client:
        baseline = live_tensor_bytes()
        sizes = []
        for model in (sd15, sdxl, sd15, sdxl, sd15):
            result = await client.call_tool("generate", {**SMALL, "model": model})
            assert not result.is_error, result.content[0].text
            assert result.structured_content["timings"]["load_s"] > 0  # each switch really reloads
            sizes.append(live_tensor_bytes() - baseline)
            status = (await client.call_tool("engine_status", {})).structured_content
            assert [m["model"] for m in status["loaded_models"]] == [model]
        cache = status["cache"]
    assert cache["budget_bytes"] == 3 * 2**20 and cache["budget_reason"] == "IMGTOOLS_MODEL_CACHE_BYTES"
    evictions = cache["evictions"]
    assert [e["model"] for e in evictions] == [sd15, sdxl, sd15, sdxl]
    # Every evicted pipeline was garbage-collected (the engine checks by weak reference)...
    assert all(e["released"] for e in evictions), evictions
    # ...and the live tensors measured here never hold two models: the same model costs the same each time.
    assert sizes[0] == sizes[2] == sizes[4], sizes
    assert sizes[1] == sizes[3], sizes
    assert max(sizes) < min(sizes) + min(sizes), sizes  # far below the sum of both models


async def test_models_stay_loaded_within_a_roomy_budget(tmp_path: Path, tiny_models: dict[str, Path]) -> None:
    sd15, sdxl = str(tiny_models["sd15"]), str(tiny_models["sdxl"])
    settings = Settings(model=sd15, output_dir=tmp_path / "out", device="cpu", hf_offline=True, model_cache_bytes="1GiB")
    async with Client(build_server(settings)) as client:
        first = await client.call_tool("generate", {**SMALL, "model": sd15})
        await client.call_tool("generate", {**SMALL, "model": sdxl})
        again = await client.call_tool("generate", {**SMALL, "model": sd15})
        status = (await client.call_tool("engine_status", {})).structured_content
    assert first.structured_content["timings"]["load_s"] > 0
    assert again.structured_content["timings"]["load_s"] == 0  # served from the cache, not reloaded
    assert {m["model"] for m in status["loaded_models"]} == {sd15, sdxl}
    assert status["cache"]["evictions"] == []
    assert status["cache"]["used_bytes"] == sum(m["memory_bytes"] for m in status["loaded_models"])


async def test_engine_status_reports_choices_and_never_the_key(tmp_path: Path, tiny_sd15: Path) -> None:
    settings = Settings(
        model=str(tiny_sd15), output_dir=tmp_path / "out", device="cpu", hf_offline=True,
        vlm_base_url="http://127.0.0.1:9/v1", vlm_model="some/vlm", vlm_api_key="sk-do-not-show-4242",
    )
    async with Client(build_server(settings)) as client:
        idle = await client.call_tool("engine_status", {})
        await client.call_tool("generate", SMALL)
        busy = await client.call_tool("engine_status", {})
        bad = await client.call_tool("engine_status", {"verbose": True})
    assert not idle.is_error, idle.content[0].text
    state = idle.structured_content
    assert state["device"] == "cpu" and state["dtype"] in ("fp32", "bf16") and state["dtype_reason"]
    assert state["backend"] and state["device_total_bytes"] >= state["device_free_bytes"] > 0
    assert state["loaded_models"] == [] and state["queue_length"] == 0 and state["running"] is None
    # Before anything is loaded, the plan the default model would get is estimated from its files.
    plan = state["default_model_plan"]
    assert plan["model"] == str(tiny_sd15) and plan["memory_plan"] == "resident" and plan["reason"]
    assert 1_000_000 < plan["estimated_weights_bytes"] < 10_000_000
    assert state["vlm"] == {"base_url": "http://127.0.0.1:9/v1", "model": "some/vlm", "api_key_set": True}
    loaded = busy.structured_content["loaded_models"][0]
    assert loaded["memory_plan"] == "resident" and loaded["memory_plan_reason"]
    assert loaded["weights_bytes"] > 0 and loaded["device"] == "cpu"
    # The estimate made from file headers matches what was measured once loaded (buffers not saved aside).
    assert abs(loaded["weights_bytes"] - plan["estimated_weights_bytes"]) < 0.01 * loaded["weights_bytes"]
    for result in (idle, busy):
        assert "sk-do-not-show-4242" not in json.dumps(result.structured_content) + result.content[0].text
    assert bad.is_error and "verbose" in bad.content[0].text


async def test_engine_status_shows_the_running_job_and_background_jobs(client: Client) -> None:
    ticket = await client.call_tool("generate", {**SMALL, "steps": 150, "background": True})
    job_id = ticket.structured_content["job_id"]
    with anyio.fail_after(60):
        while True:
            state = (await client.call_tool("engine_status", {})).structured_content
            if state["running"] is not None:
                break
            await anyio.sleep(0)  # yield to the job; the loop ends on the engine's own state, not a timer
    assert state["running"].startswith("txt2img:") and state["running_s"] >= 0
    assert state["background_jobs_active"] == 1 and state["queue_length"] == 0
    await client.call_tool("cancel_job", {"job_id": job_id})
    with anyio.fail_after(60):
        done = await client.call_tool("get_job", {"job_id": job_id, "wait_s": 30})
    assert done.structured_content["state"] == "cancelled"
    assert (await client.call_tool("engine_status", {})).structured_content["running"] is None


async def test_a_default_hub_model_not_downloaded_is_listed_as_such(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    settings = Settings(model="someone/not-downloaded", output_dir=tmp_path / "out", device="cpu", hf_offline=True)
    async with Client(build_server(settings)) as client:
        result = await client.call_tool("list_models", {})
        status = await client.call_tool("engine_status", {})
    assert not result.is_error, result.content[0].text
    (entry,) = result.structured_content["models"]
    assert entry["model"] == "someone/not-downloaded" and entry["default"] and not entry["available"]
    assert "offline" in entry["note"] and "not downloaded" in result.content[0].text
    # Nothing local to estimate from: no plan is claimed for it.
    assert status.structured_content["default_model_plan"] is None
