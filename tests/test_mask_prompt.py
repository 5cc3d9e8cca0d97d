"""Masks by description: the loopback VLM finds the object from the pixels and returns boxes; the mask lands there."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from imgtools_mcp.images.segment import Segmenter, grown_box
from imgtools_mcp.infotext import parse_infotext
from imgtools_mcp.testing.tiny_sam import make_test_sam
from imgtools_mcp.vlm import VLMClient
from imgtools_mcp.vlm.grounding import NothingFound, mask_for
from tests.openai_loopback import OpenAILoopback, Scripted

pytestmark = pytest.mark.anyio
KEY = "test-key"
CUP = (60, 20, 100, 52)  # left, top, right, bottom (exclusive) of the drawn object


@pytest.fixture
def server() -> Iterator[OpenAILoopback]:
    with OpenAILoopback(api_key=KEY) as loopback:
        yield loopback
        assert loopback.problems == []  # strict JSON schema and image parts as an OpenAI server wants them


def client_for(server: OpenAILoopback) -> VLMClient:
    return VLMClient(base_url=server.base_url, model="local-vlm", api_key=KEY, max_retries=0, timeout=10)


def scene(with_cup: bool = True) -> Image.Image:
    image = Image.new("RGB", (128, 80), (70, 110, 70))
    if with_cup:
        ImageDraw.Draw(image).rectangle((CUP[0], CUP[1], CUP[2] - 1, CUP[3] - 1), fill=(240, 240, 250))
    return image


async def test_boxes_from_the_vlm_become_a_mask_over_the_object(server: OpenAILoopback) -> None:
    async with client_for(server) as client:
        result = await client.ground(scene(), "the cup")
    (found,) = result.grounding.objects
    assert all(0 <= value <= 1000 for value in found.bbox_2d)
    request = server.chat_requests[-1]
    assert request.kind == "grounding" and any("the cup" in text for text in request.texts)
    mask = np.asarray(mask_for((128, 80), result, "the cup")) > 127
    ys, xs = np.nonzero(mask)
    assert abs(xs.min() - CUP[0]) <= 1 and abs(xs.max() + 1 - CUP[2]) <= 1
    assert abs(ys.min() - CUP[1]) <= 1 and abs(ys.max() + 1 - CUP[3]) <= 1
    assert mask.mean() == pytest.approx((CUP[2] - CUP[0]) * (CUP[3] - CUP[1]) / (128 * 80), abs=0.02)
    # The grid is relative: the same answer fits the image at any size.
    assert np.asarray(mask_for((256, 160), result, "the cup")).mean() == pytest.approx(mask.mean() * 255, abs=6)


async def test_nothing_found_is_a_clear_error_not_an_empty_mask(server: OpenAILoopback) -> None:
    async with client_for(server) as client:
        result = await client.ground(scene(with_cup=False), "the cup")
    assert result.grounding.objects == []
    with pytest.raises(NothingFound, match="mask_prompt: the VLM .* found nothing matching 'the cup'"):
        mask_for((128, 80), result, "the cup")


async def test_boxes_off_the_grid_are_refused_and_asked_again(server: OpenAILoopback) -> None:
    # A Qwen2.5-VL-style answer in pixels (over 1000) does not validate; the client says why and asks again.
    server.script([Scripted.reply(json.dumps({"objects": [{"label": "cup", "bbox_2d": [60, 20, 1400, 52]}]}))])
    async with client_for(server) as client:
        result = await client.ground(scene(), "the cup")
    assert len(server.chat_requests) == 2 and result.usage.requests == 2
    assert "0-1000 grid" in server.chat_requests[1].texts[-1]
    assert len(result.grounding.objects) == 1


# ----- inpaint with mask_prompt, through the MCP client -----


def data_url(image: Image.Image) -> str:
    import base64
    import io

    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


@asynccontextmanager
async def connect(server: OpenAILoopback, settings, segmenter: str) -> AsyncIterator[object]:
    from mcp import Client
    from pydantic import SecretStr

    from imgtools_mcp.server import build_server

    configured = settings.model_copy(
        update={"vlm_base_url": server.base_url, "vlm_api_key": SecretStr(KEY), "segmenter": segmenter}
    )
    async with Client(build_server(configured)) as connected:
        yield connected


@pytest.fixture
async def mcp_client(server: OpenAILoopback, settings):
    async with connect(server, settings, "none") as connected:  # boxes, whatever SAM this machine has cached
        yield connected


@pytest.fixture(scope="module")
def tiny_sam(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_test_sam(tmp_path_factory.mktemp("sam") / "tiny-sam")


def saved_mask(data: dict) -> np.ndarray:
    output = Path(data["images"][0]["path"])
    return np.asarray(Image.open(output.parent / f"{data['parameters']['mask_made']}.png").convert("L")) > 127


def outside_kept(data: dict, picture: Image.Image, mask: np.ndarray) -> bool:
    painted = np.asarray(Image.open(data["images"][0]["path"]).convert("RGB"), dtype=np.int16)
    return np.array_equal(painted[~mask], np.asarray(picture, dtype=np.int16)[~mask])


def recorded(data: dict) -> tuple[dict[str, str], dict]:
    """The output's infotext fields and its sidecar."""
    path = Path(data["images"][0]["path"])
    return parse_infotext(Image.open(path).text["parameters"])[2], json.loads(path.with_suffix(".json").read_text())


async def test_inpaint_by_description_repaints_only_where_the_vlm_found_it(mcp_client) -> None:
    picture = scene()
    result = await mcp_client.call_tool(
        "inpaint",
        {"prompt": "a red cup", "image": data_url(picture), "mask_prompt": "the cup", "mask_blur": 0, "steps": 2, "seed": 1},
    )
    assert not result.is_error, result.content
    data = result.structured_content
    made_id = data["parameters"]["mask_made"]
    assert data["parameters"]["mask_prompt"] == "the cup" and made_id
    assert any(block.type == "resource_link" and block.uri.endswith(made_id) for block in result.content)
    output = Path(data["images"][0]["path"])
    mask = np.asarray(Image.open(output.parent / f"{made_id}.png").convert("L")) > 127
    ys, xs = np.nonzero(mask)
    assert (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1) == pytest.approx(CUP, abs=1)
    painted = np.asarray(Image.open(output).convert("RGB"), dtype=np.int16)
    original = np.asarray(picture, dtype=np.int16)
    assert np.array_equal(painted[~mask], original[~mask])  # every pixel outside the mask kept exactly
    assert np.abs(painted[mask] - original[mask]).mean() > 5  # and the cup repainted
    assert any("mask_prompt" in warning for warning in data["warnings"])


async def test_a_vlm_that_finds_nothing_is_a_tool_error(mcp_client) -> None:
    result = await mcp_client.call_tool(
        "inpaint", {"prompt": "a red cup", "image": data_url(scene(with_cup=False)), "mask_prompt": "the cup", "steps": 2}
    )
    assert result.is_error
    assert "mask_prompt: the VLM" in result.content[0].text and "found nothing" in result.content[0].text


INPAINT_CUP = {"prompt": "a red cup", "mask_prompt": "the cup", "mask_blur": 0, "steps": 2, "seed": 1}


async def test_segmenter_none_masks_exactly_the_vlms_boxes(server: OpenAILoopback, mcp_client) -> None:
    picture = scene()
    async with client_for(server) as client:
        expected = np.asarray(mask_for(picture.size, await client.ground(picture, "the cup"), "the cup")) > 127
    result = await mcp_client.call_tool("inpaint", {**INPAINT_CUP, "image": data_url(picture)})
    assert not result.is_error, result.content
    data = result.structured_content
    assert np.array_equal(saved_mask(data), expected)
    assert data["parameters"]["mask_method"] == "boxes"
    fields, side = recorded(data)
    assert fields["Mask method"] == "boxes" and side["mask"]["method"] == "boxes"
    assert any("IMGTOOLS_SEGMENTER=none" in warning for warning in data["warnings"])


async def test_segmenter_auto_without_sam_on_disk_keeps_boxes_and_says_how_to_get_it(
    server: OpenAILoopback, settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-hub-cache"))
    async with connect(server, settings, "auto") as client:
        result = await client.call_tool("inpaint", {**INPAINT_CUP, "image": data_url(scene())})
    assert not result.is_error, result.content
    data = result.structured_content
    assert data["parameters"]["mask_method"] == "boxes"
    assert any("hf download facebook/sam-vit-base" in warning for warning in data["warnings"])


async def test_a_segmenter_cuts_a_silhouette_inside_the_grown_box(server: OpenAILoopback, settings, tiny_sam: Path) -> None:
    picture = scene()
    async with client_for(server) as client:
        (found,) = (await client.ground(picture, "the cup")).grounding.objects
    left, top, right, bottom = grown_box(found.pixel_box(picture.size), picture.size)
    async with connect(server, settings, str(tiny_sam)) as client:
        result = await client.call_tool("inpaint", {**INPAINT_CUP, "image": data_url(picture)})
    assert not result.is_error, result.content
    data = result.structured_content
    mask = saved_mask(data)
    assert mask.any()
    outside = np.ones_like(mask)
    outside[top:bottom, left:right] = False
    assert not mask[outside].any()  # random weights cut any shape, but never past the box and its margin
    assert outside_kept(data, picture, mask)
    method = f"segmenter:{tiny_sam}"
    assert data["parameters"]["mask_method"] == method
    fields, side = recorded(data)
    assert fields["Mask method"] == method and side["mask"]["method"] == method
    assert any("cut to silhouettes" in warning for warning in data["warnings"])


def test_silhouettes_of_several_boxes_stay_inside_their_grown_boxes(tiny_sam: Path) -> None:
    image = scene()
    boxes = [(60, 20, 100, 52), (4, 40, 30, 76)]
    cut = Segmenter(str(tiny_sam), offline=True).silhouettes(image, boxes)
    assert cut is not None and cut.model == str(tiny_sam)
    mask = np.asarray(cut.mask) > 127
    allowed = np.zeros_like(mask)
    for box in boxes:
        left, top, right, bottom = grown_box(box, image.size)
        allowed[top:bottom, left:right] = True
        assert mask[box[1]:box[3], box[0]:box[2]].any()  # each box has its silhouette (or is kept whole)
    assert not mask[~allowed].any()
    assert Segmenter("none").silhouettes(image, boxes) is None


async def test_a_segmenter_folder_that_does_not_exist_is_a_one_line_tool_error(server: OpenAILoopback, settings) -> None:
    async with connect(server, settings, "/nonexistent/sam-vit-base") as client:
        result = await client.call_tool("inpaint", {**INPAINT_CUP, "image": data_url(scene())})
    assert result.is_error
    text = result.content[0].text
    assert "mask_prompt: IMGTOOLS_SEGMENTER='/nonexistent/sam-vit-base' is not a folder" in text and "\n" not in text
