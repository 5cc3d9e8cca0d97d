"""Masks by description: the loopback VLM finds the object from the pixels and returns boxes; the mask lands there."""

from __future__ import annotations

import json
from collections.abc import Iterator

import numpy as np
import pytest
from PIL import Image, ImageDraw

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
