"""LoRA through the MCP client: named adapters loaded once, weights per request, nothing carried over, recorded in infotext."""

from __future__ import annotations

import gc
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from mcp import Client
from PIL import Image
from safetensors.torch import save_file

from imgtools_mcp.config import Settings
from imgtools_mcp.testing.files import make_test_lora
from imgtools_mcp.engine.weights import tensor_data_sha256
from imgtools_mcp.infotext import parse_infotext, split_lora_tags
from imgtools_mcp.server import build_server

pytestmark = pytest.mark.anyio

BASE = {"prompt": "a lighthouse at dusk", "width": 64, "height": 64, "steps": 2, "seed": 11}


@pytest.fixture(scope="session")
def lora_dir(tmp_path_factory: pytest.TempPathFactory, tiny_models: dict[str, Path]) -> Path:
    folder = tmp_path_factory.mktemp("loras")
    make_test_lora(tiny_models["sd15"], folder / "tiny_style.safetensors", seed=1)
    make_test_lora(tiny_models["sd15"], folder / "styles" / "ink.safetensors", seed=2)
    return folder


@pytest.fixture
def lora_settings(tmp_path: Path, tiny_sd15: Path, lora_dir: Path) -> Settings:
    return Settings(model=str(tiny_sd15), output_dir=tmp_path / "out", device="cpu", hf_offline=True, lora_dirs=[lora_dir])


@pytest.fixture
async def lora_client(lora_settings: Settings):
    async with Client(build_server(lora_settings)) as connected:
        yield connected


def pixels(result) -> np.ndarray:
    assert not result.is_error, result.content[0].text
    return np.asarray(Image.open(result.structured_content["images"][0]["path"]).convert("RGB"), dtype=np.int16)


async def generate(client: Client, **overrides):
    return await client.call_tool("generate", {**BASE, **overrides})


def live_tensors() -> int:
    gc.collect()
    return sum(1 for obj in gc.get_objects() if isinstance(obj, torch.Tensor))


async def status(client: Client) -> dict:
    result = await client.call_tool("engine_status", {})
    assert not result.is_error, result.content[0].text
    return result.structured_content


async def test_weight_zero_is_exactly_no_lora_weight_one_changes_and_nothing_leaks(lora_client: Client) -> None:
    plain = pixels(await generate(lora_client))
    zero = pixels(await generate(lora_client, loras=[{"name": "tiny_style", "weight": 0}]))
    full = pixels(await generate(lora_client, loras=[{"name": "tiny_style", "weight": 1}]))
    half = pixels(await generate(lora_client, loras=[{"name": "tiny_style", "weight": 0.5}]))
    after = pixels(await generate(lora_client))
    again = pixels(await generate(lora_client, loras=[{"name": "tiny_style"}]))  # weight defaults to 1
    assert np.array_equal(zero, plain)
    assert np.abs(full - plain).max() > 10
    assert np.abs(half - plain).max() > 0 and np.abs(half - full).max() > 0
    # The request after a LoRA request runs without it, pixel for pixel.
    assert np.array_equal(after, plain)
    # Turning it back on after it was off gives the same LoRA image again (disable_lora is undone).
    assert np.array_equal(again, full)


async def test_two_loras_at_once_and_each_changes_the_result(lora_client: Client) -> None:
    plain = pixels(await generate(lora_client))
    ink = pixels(await generate(lora_client, loras=[{"name": "styles/ink", "weight": 1}]))
    both = pixels(await generate(lora_client, loras=[{"name": "tiny_style", "weight": 1}, {"name": "ink", "weight": 1}]))
    style = pixels(await generate(lora_client, loras=[{"name": "tiny_style", "weight": 1}]))
    assert len({plain.tobytes(), ink.tobytes(), both.tobytes(), style.tobytes()}) == 4
    # Only the requested adapter is active: the last image has no trace of `ink`.
    state = await status(lora_client)
    model = state["loaded_models"][0]
    assert sorted(model["loras_loaded"]) == ["ink", "tiny_style"]
    assert model["loras_active"] == [{"name": "tiny_style", "weight": 1.0}]


async def test_infotext_and_sidecar_record_the_lora_and_round_trip(lora_client: Client, lora_dir: Path) -> None:
    first = await generate(lora_client, loras=[{"name": "tiny_style", "weight": 0.8}])
    image = first.structured_content["images"][0]
    prompt, _, fields = parse_infotext(Image.open(image["path"]).text["parameters"])
    assert prompt == f"{BASE['prompt']} <lora:tiny_style:0.8>"
    expected_hash = tensor_data_sha256(lora_dir / "tiny_style.safetensors")[:12]
    assert fields["Lora hashes"] == f"tiny_style: {expected_hash}"
    sidecar = json.loads(Path(image["path"]).with_suffix(".json").read_text())
    assert sidecar["parameters"]["loras"] == [{"name": "tiny_style", "weight": 0.8}]
    assert sidecar["loras"][0]["hash"] == expected_hash and sidecar["loras"][0]["weight"] == 0.8
    # What the infotext says is enough to make the same image again.
    text, tags = split_lora_tags(prompt)
    replay = await lora_client.call_tool(
        "generate",
        {
            "prompt": text,
            "loras": [{"name": name, "weight": weight} for name, weight in tags],
            "seed": int(fields["Seed"]),
            "steps": int(fields["Steps"]),
            "width": 64,
            "height": 64,
        },
    )
    assert np.array_equal(pixels(replay), pixels(first))


async def test_lora_by_path_and_by_cached_hub_id(
    lora_settings: Settings, lora_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A hub LoRA repo in a HuggingFace cache laid out as huggingface_hub writes it.
    cache = tmp_path / "hf-cache"
    snapshot = cache / "models--someone--tiny-lora" / "snapshots" / ("a" * 40)
    snapshot.mkdir(parents=True)
    shutil.copy(lora_dir / "tiny_style.safetensors", snapshot / "pytorch_lora_weights.safetensors")
    (cache / "models--someone--tiny-lora" / "refs").mkdir()
    (cache / "models--someone--tiny-lora" / "refs" / "main").write_text("a" * 40)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    async with Client(build_server(lora_settings)) as client:
        by_name = pixels(await generate(client, loras=[{"name": "tiny_style"}]))
        by_path = pixels(await generate(client, loras=[{"name": str(lora_dir / "tiny_style.safetensors")}]))
        by_hub = pixels(await generate(client, loras=[{"name": "someone/tiny-lora"}]))
        missing = await generate(client, loras=[{"name": "someone/not-cached"}])
    assert np.array_equal(by_name, by_path) and np.array_equal(by_name, by_hub)
    assert missing.is_error and "loras" in missing.content[0].text and "offline" in missing.content[0].text


@pytest.mark.parametrize(
    "loras, expected",
    [
        ([{"name": "no_such_lora"}], ["loras", "no_such_lora", "tiny_style", "styles/ink"]),
        ([{"name": "tiny_style"}, {"name": "tiny_style.safetensors"}], ["loras", "twice"]),
        ([{"name": "tiny_style", "weight": 9}], ["loras", "weight"]),
        ([{"name": ""}], ["loras", "name"]),
        ([{"name": "tiny_style", "strength": 1}], ["loras", "strength"]),
    ],
)
async def test_bad_loras_are_one_line_tool_errors(lora_client: Client, loras: list, expected: list[str]) -> None:
    result = await generate(lora_client, loras=loras)
    assert result.is_error
    text = result.content[0].text
    for word in expected:
        assert word in text, text
    assert "\n" not in text and "Traceback" not in text
    assert not (await generate(lora_client)).is_error


async def test_lora_for_another_family_or_not_a_lora_is_refused(lora_settings: Settings, tmp_path: Path) -> None:
    folder = tmp_path / "more-loras"
    folder.mkdir()
    # An SDXL LoRA's cross-attention key projection reads SDXL's 2048-wide text features.
    key = "unet.down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k"
    save_file({f"{key}.lora_A.weight": torch.zeros(4, 2048), f"{key}.lora_B.weight": torch.zeros(640, 4)}, str(folder / "xl_style.safetensors"))
    save_file({"some.weight": torch.zeros(2, 2)}, str(folder / "not_a_lora.safetensors"))
    settings = lora_settings.model_copy(update={"lora_dirs": [folder]})
    async with Client(build_server(settings)) as client:
        xl = await generate(client, loras=[{"name": "xl_style"}])
        other = await generate(client, loras=[{"name": "not_a_lora"}])
        assert not (await generate(client)).is_error
    assert xl.is_error and "loras" in xl.content[0].text and "SDXL" in xl.content[0].text
    assert other.is_error and "loras" in other.content[0].text and "not a LoRA" in other.content[0].text


async def test_loras_work_with_edit_too(lora_client: Client) -> None:
    source = await generate(lora_client)
    image_id = source.structured_content["images"][0]["id"]
    edit = {"prompt": "a lighthouse in snow", "image": image_id, "strength": 0.8, "steps": 4, "seed": 3}
    plain = pixels(await lora_client.call_tool("edit", edit))
    styled = pixels(await lora_client.call_tool("edit", {**edit, "loras": [{"name": "tiny_style"}]}))
    assert np.abs(styled - plain).max() > 0


async def test_repeated_lora_requests_load_once_and_do_not_grow(lora_client: Client) -> None:
    counts = []
    for index in range(10):
        loras = [{"name": "tiny_style", "weight": 0.5 + index / 10}] if index % 2 == 0 else []
        result = await generate(lora_client, loras=loras)
        assert not result.is_error
        counts.append(live_tensors())
        state = await status(lora_client)
        assert state["loaded_models"][0]["loras_loaded"] == ["tiny_style"]
    # After the first LoRA request loaded the adapter, the number of live tensors stays put.
    assert max(counts[2:]) <= counts[1], counts
