"""VLMClient through the real openai client against a loopback OpenAI-compatible server."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import pytest
from openai_loopback import OpenAILoopback, Scripted
from PIL import Image
from test_vlm_media import read_index, write_video

from imgtools_mcp.vlm import (
    VLMAuthError,
    VLMBadReply,
    VLMClient,
    VLMConfigError,
    VLMError,
    VLMOutOfCredits,
    VLMRateLimited,
    VLMTimeout,
    VLMUnavailable,
    VLMUsage,
    load_prompt,
    probe_video,
    prompt_names,
    prompt_placeholders,
    render_prompt,
    sample_frames,
)
from imgtools_mcp.vlm.providers import pick_provider

pytestmark = pytest.mark.anyio

KEY = "test-key"
GREY = Image.new("RGB", (64, 48), (128, 128, 128))
WHITE = Image.new("RGB", (64, 48), (255, 255, 255))
NOT_A_CRITIQUE = '{"score": 7}'


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def server() -> Iterator[OpenAILoopback]:
    with OpenAILoopback(api_key=KEY) as loopback:
        yield loopback
        # Every request the client made, well-behaved or retried, must have had a valid shape.
        assert loopback.problems == []


def client_for(server: OpenAILoopback, *, openrouter: bool = False, **options) -> VLMClient:
    options.setdefault("api_key", KEY)
    options.setdefault("max_retries", 2)
    options.setdefault("timeout", 10)
    if openrouter:
        return VLMClient(base_url=server.openrouter_base_url, provider="openrouter", **options)
    return VLMClient(base_url=server.base_url, model="local-vlm", **options)


def summed(server: OpenAILoopback) -> VLMUsage:
    """What the server billed, request by request, added up the way the client should."""
    total = VLMUsage()
    for request in server.chat_requests:
        if request.usage:
            total += VLMUsage(
                prompt_tokens=request.usage["prompt_tokens"],
                completion_tokens=request.usage["completion_tokens"],
                cost=request.usage.get("cost"),
                requests=1,
            )
    return total


# -- describe ---------------------------------------------------------------------------------------


async def test_describe_sends_the_image_resized_to_the_pixel_budget(server):
    async with client_for(server, image_max_pixels=256 * 256) as client:
        result = await client.describe([Image.new("RGB", (1000, 500), (200, 10, 10))], "What colour is it?")
    (request,) = server.chat_requests
    assert request.image_sizes == [(362, 181)]
    assert request.image_formats == ["jpeg"]
    assert result.text.startswith("image 1: size=362x181 mean=(")
    assert "What colour is it?" in request.texts[0]
    assert result.model == "local-vlm"
    assert result.usage == summed(server) and result.usage.cost is None


async def test_describe_several_images_labels_each(server):
    async with client_for(server) as client:
        result = await client.describe([GREY, Image.new("RGBA", (10, 10), (0, 0, 255, 255))])
    (request,) = server.chat_requests
    assert request.texts[1:] == ["image 1:", "image 2:"]
    assert request.image_formats == ["jpeg", "png"]
    assert "image 2: size=10x10 mean=(0,0,255)" in result.text


async def test_describe_frames_labels_each_frame_with_its_timestamp(server):
    frames = [(0.0, GREY), (1.5, WHITE), (3.25, GREY)]
    async with client_for(server) as client:
        result = await client.describe_frames(frames, duration_s=4.0)
    (request,) = server.chat_requests
    assert request.texts[1:] == ["t=0.00s", "t=1.50s", "t=3.25s"]
    assert "3 frames" in request.texts[0] and "4.0 seconds" in request.texts[0]
    assert request.image_sizes == [(64, 48)] * 3
    assert result.text.count("size=64x48") == 3


async def test_empty_answer_is_retried_once(server):
    server.script([Scripted.reply("")])
    async with client_for(server) as client:
        result = await client.describe([GREY])
    assert len(server.chat_requests) == 2
    assert "size=64x48" in result.text
    assert result.usage == summed(server) and result.usage.requests == 2


async def test_empty_answer_twice_is_a_bad_reply_that_names_the_cause(server):
    server.script([Scripted.reply("", finish_reason="length")] * 2)
    async with client_for(server) as client:
        with pytest.raises(VLMBadReply, match="cut off at max_tokens") as caught:
            await client.describe([GREY])
    assert len(server.chat_requests) == 2
    assert caught.value.usage == summed(server)


async def test_error_inside_a_200_reply_is_an_error_and_retried(server):
    server.script([Scripted.error_in_200(502), Scripted.error_in_choice(503)])
    async with client_for(server) as client:
        with pytest.raises(VLMUnavailable, match="provider disconnected mid-answer.*after 2 tries"):
            await client.describe([GREY])
    assert len(server.chat_requests) == 2


async def test_error_in_200_then_success(server):
    server.script([Scripted.error_in_choice(502)])
    async with client_for(server) as client:
        result = await client.describe([GREY])
    assert len(server.chat_requests) == 2
    assert "size=64x48" in result.text


async def test_a_200_reply_that_is_not_json_is_retried(server):
    server.script([Scripted(body=b"<html>bad gateway</html>")])
    async with client_for(server) as client:
        result = await client.describe([GREY])
    assert len(server.chat_requests) == 2
    assert "size=64x48" in result.text


async def test_sampled_video_frames_reach_the_server_in_order(server, tmp_path):
    video = write_video(tmp_path / "clip.mp4", 30)
    frames = sample_frames(video, fps=1, total_pixel_budget=3 * 32 * 24)
    async with client_for(server) as client:
        await client.describe_frames(frames, "What changes?", duration_s=probe_video(video).duration_s)
    (request,) = server.chat_requests
    assert request.texts[1:] == ["t=0.00s", "t=1.00s", "t=2.00s"]
    assert request.image_sizes == [(32, 24)] * 3
    # the index blocks survive resizing and JPEG, so the server's images tell which frames it got
    assert [read_index(image) for image in request.images] == [0, 10, 20]
    assert "What changes?" in request.texts[0] and "3.0 seconds" in request.texts[0]


async def test_out_of_credits_inside_a_200_reply_is_not_retried(server):
    server.script([Scripted.error_in_200(402, "Insufficient credits")])
    async with client_for(server) as client:
        with pytest.raises(VLMOutOfCredits, match="credits"):
            await client.describe([GREY])
    assert len(server.chat_requests) == 1


# -- critique and revise ------------------------------------------------------------------------------


async def test_critique_is_validated_and_scored_from_the_pixels(server):
    async with client_for(server) as client:
        result = await client.critique(WHITE, "a white square", {"steps": 4, "sampler": "euler"})
    (request,) = server.chat_requests
    critique = result.critique
    assert critique.score == pytest.approx(10.0) and critique.problems == []
    assert critique.parameter_advice.sampler == "euler_a"
    assert request.body["temperature"] == 0
    assert request.body["response_format"]["json_schema"]["name"] == "critique"
    assert request.body["response_format"]["json_schema"]["strict"] is True
    assert "a white square" in request.texts[0] and '"steps": 4' in request.texts[0]
    assert result.usage == summed(server)


async def test_custom_scorer_decides_the_score():
    with OpenAILoopback(api_key=KEY, scorer=lambda image: 10 - image.getpixel((0, 0))[0] / 25.5) as server:
        async with client_for(server, image_format="png") as client:  # lossless, so the pixel is exact
            result = await client.critique(Image.new("RGB", (32, 32), (51, 0, 0)), "a dark red square")
    assert result.critique.score == pytest.approx(8.0)
    assert server.problems == []


async def test_critique_retries_bad_json_and_schema_breaks_then_succeeds(server):
    server.script([Scripted.reply("Sure! The image looks fine."), Scripted.reply(NOT_A_CRITIQUE)])
    async with client_for(server) as client:
        result = await client.critique(GREY, "a grey square")
    first, second, third = server.chat_requests
    assert result.critique.score == pytest.approx(5.02)
    # each retry tells the model what was wrong with its previous reply
    assert "Sure! The image looks fine." in second.texts and any("Invalid JSON" in text for text in second.texts)
    assert NOT_A_CRITIQUE in third.texts and any("summary: Field required" in text for text in third.texts)
    assert third.image_sizes == [(64, 48)]
    assert result.usage == summed(server) and result.usage.requests == 3


async def test_critique_that_never_validates_is_reported_not_guessed(server):
    server.script([Scripted.reply(NOT_A_CRITIQUE)] * 3)
    async with client_for(server) as client:
        with pytest.raises(VLMBadReply, match=r"Critique schema.*after 3 tries") as caught:
            await client.critique(GREY, "a grey square")
    assert len(server.chat_requests) == 3
    assert caught.value.usage == summed(server)


async def test_score_out_of_range_breaks_the_schema(server):
    bad = (
        '{"summary": "s", "problems": [], "prompt_adherence": 11, "visual_quality": 5, "score": 5,'
        ' "revised_prompt": "p", "negative_prompt_additions": [], "parameter_advice": {"steps": null,'
        ' "guidance_scale": null, "sampler": null, "strength": null, "notes": null}}'
    )
    server.script([Scripted.reply(bad)] * 3)
    async with client_for(server, json_attempts=3) as client:
        with pytest.raises(VLMBadReply, match="prompt_adherence"):
            await client.critique(GREY, "a grey square")


async def test_revise_sees_every_round_and_returns_a_revision(server):
    history = [
        {"prompt": "a cat", "parameters": {"steps": 20}, "score": 3.0, "problems": ["blurry"]},
        {"prompt": "a sharp photo of a cat", "parameters": {"steps": 30}, "score": 5.5, "problems": ["too dark"]},
    ]
    async with client_for(server) as client:
        result = await client.revise("a cat on a sofa", history)
    (request,) = server.chat_requests
    assert request.body["response_format"]["json_schema"]["name"] == "revision"
    assert request.images == []
    prompt = request.texts[0]
    assert "Round 1:" in prompt and "Round 2:" in prompt and "a sharp photo of a cat" in prompt and "too dark" in prompt
    assert result.revision.prompt == "revised prompt after 2 round(s)"
    assert result.revision.parameter_changes.guidance_scale == 6.5


async def test_revise_returns_the_configured_revision():
    revision = {
        "rationale": "r",
        "prompt": "p2",
        "negative_prompt": "",
        "parameter_changes": {
            "steps": 40, "guidance_scale": None, "sampler": "dpmpp_2m_karras", "strength": None, "notes": None
        },
    }
    with OpenAILoopback(api_key=KEY, revision=revision) as server:
        async with client_for(server) as client:
            result = await client.revise("goal", [{"prompt": "p1", "score": 2}])
    assert result.revision.prompt == "p2" and result.revision.parameter_changes.steps == 40


# -- HTTP errors and retries --------------------------------------------------------------------------


async def test_429_is_retried_after_retry_after(server):
    server.script([Scripted.http_error(429, retry_after=0.2)])
    async with client_for(server) as client:
        started = time.monotonic()
        result = await client.describe([GREY])
        elapsed = time.monotonic() - started
    assert len(server.chat_requests) == 2
    assert elapsed >= 0.2
    assert "size=64x48" in result.text


async def test_429_that_persists_is_rate_limited(server):
    server.script([Scripted.http_error(429, retry_after=0.01)] * 3)
    async with client_for(server, max_retries=2) as client:
        with pytest.raises(VLMRateLimited, match="after 2 retries"):
            await client.describe([GREY])
    assert len(server.chat_requests) == 3


async def test_5xx_is_retried(server):
    server.script([Scripted.http_error(500), Scripted.http_error(503, retry_after=0.01)])
    async with client_for(server, max_retries=2) as client:
        result = await client.critique(WHITE, "white")
    assert [request.status for request in server.chat_requests] == [500, 503, 200]
    assert result.critique.score == pytest.approx(10.0)


async def test_401_is_immediate_and_says_which_key_to_set(server):
    async with client_for(server, api_key="wrong-key") as client:
        with pytest.raises(VLMAuthError, match="OPENROUTER_API_KEY or IMGTOOLS_VLM_API_KEY") as caught:
            await client.describe([GREY])
    assert caught.value.status_code == 401
    assert len(server.chat_requests) == 1


async def test_402_is_immediate_and_says_out_of_credits(server):
    server.script([Scripted.http_error(402, "Insufficient credits")])
    async with client_for(server) as client:
        with pytest.raises(VLMOutOfCredits, match="out of credits.*Insufficient credits"):
            await client.critique(GREY, "grey")
    assert len(server.chat_requests) == 1


async def test_timeout_is_reported(server):
    server.script([Scripted.delay(5)])
    async with client_for(server, timeout=0.3, max_retries=0) as client:
        started = time.monotonic()
        with pytest.raises(VLMTimeout, match="within 0.3 s"):
            await client.describe([GREY])
    assert time.monotonic() - started < 3


async def test_the_timeout_bounds_the_whole_call_and_the_message_counts_real_retries(server):
    """Not timeout x (1 + max_retries): a server that never answers costs `timeout` once, and the error says no
    retry was made (there was no time for one) instead of claiming max_retries."""
    server.script([Scripted.delay(5)] * 4)
    async with client_for(server, timeout=0.6, max_retries=3) as client:
        started = time.monotonic()
        with pytest.raises(VLMTimeout, match=r"within 0.6 s \(IMGTOOLS_VLM_TIMEOUT_S; 0 retries made\)"):
            await client.describe([GREY])
        assert time.monotonic() - started < 2.5
    assert len(server.chat_requests) == 1


async def test_retries_named_in_an_error_are_the_ones_made(server):
    server.script([Scripted.http_error(503, retry_after=0.01)] * 3)
    async with client_for(server, max_retries=2) as client:
        with pytest.raises(VLMUnavailable, match="after 2 retries"):
            await client.describe([GREY])
    assert len(server.chat_requests) == 3
    server.script([Scripted.http_error(400, "bad request")])
    async with client_for(server, max_retries=2) as client:
        with pytest.raises(VLMError) as caught:
            await client.describe([GREY])
    assert "retries" not in caught.value.message


async def test_a_slow_attempt_is_retried_within_the_call_timeout(server):
    server.script([Scripted.delay(5)])
    async with client_for(server, timeout=10, attempt_timeout=0.3, max_retries=1) as client:
        result = await client.describe([GREY])
    assert "size=64x48" in result.text
    assert len(server.chat_requests) == 2


async def test_waiting_is_reported_while_the_vlm_thinks(server):
    server.script([Scripted.delay(1.0)])
    waits: list[tuple[float, float]] = []

    async def on_wait(waited: float, allowed: float) -> None:
        waits.append((waited, allowed))

    async with client_for(server, timeout=10, wait_report_s=0.2) as client:
        await client.describe([GREY], on_wait=on_wait)
    assert len(waits) >= 3 and all(allowed == 10 for _, allowed in waits)
    assert [waited for waited, _ in waits] == sorted(waited for waited, _ in waits)


async def test_unreachable_server_is_unavailable():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    async with VLMClient(base_url=f"http://127.0.0.1:{port}/v1", api_key=KEY, max_retries=0) as client:
        with pytest.raises(VLMUnavailable, match="could not reach"):
            await client.describe([GREY])


# -- keys, providers and OpenRouter conventions -------------------------------------------------------


async def test_missing_openrouter_key_fails_at_call_time_not_construction():
    client = VLMClient(api_key=None)  # the default: OpenRouter
    assert client.provider.id == "openrouter" and not client.configured
    assert client.summary()["api_key_set"] is False
    assert "sk-or-secret" not in repr(VLMClient(api_key="sk-or-secret").summary())
    with pytest.raises(VLMConfigError, match="set OPENROUTER_API_KEY or IMGTOOLS_VLM_API_KEY"):
        await client.describe([GREY])


async def test_local_server_without_key_gets_a_placeholder():
    with OpenAILoopback(api_key=None) as server:
        async with VLMClient(base_url=server.base_url, model="llava", api_key=None) as client:
            assert client.configured
            await client.describe([GREY])
        assert server.chat_requests[0].headers["authorization"] == "Bearer not-needed"
        assert server.problems == []


async def test_openrouter_requests_carry_attribution_routing_usage_and_reasoning(server):
    server.script([Scripted.reply(NOT_A_CRITIQUE)])
    options = {"app_url": "https://example.test/imgtools", "app_title": "imgtools-test"}
    async with client_for(server, openrouter=True, **options) as client:
        result = await client.critique(GREY, "grey")
        described = await client.describe([GREY])
    critique_request = server.chat_requests[0]
    assert critique_request.headers["http-referer"] == "https://example.test/imgtools"
    assert critique_request.headers["x-title"] == "imgtools-test"
    assert critique_request.body["provider"] == {"require_parameters": True}
    assert critique_request.body["usage"] == {"include": True}
    assert critique_request.body["reasoning"] == {"max_tokens": 1024, "exclude": True}
    assert critique_request.body["max_tokens"] == 2048 + 1024
    # no structured output asked, so no reason to restrict routing
    assert "provider" not in server.chat_requests[-1].body
    # usage and cost add up over the retried critique
    assert result.usage.requests == 2
    requests_for_critique = server.chat_requests[:2]
    assert result.usage.cost == pytest.approx(sum(request.usage["cost"] for request in requests_for_critique))
    assert result.usage.prompt_tokens == sum(request.usage["prompt_tokens"] for request in requests_for_critique)
    assert described.usage.cost == pytest.approx(server.chat_requests[-1].usage["cost"])


async def test_plain_servers_get_no_openrouter_fields(server):
    async with client_for(server, app_url="https://example.test", app_title="t") as client:
        await client.critique(GREY, "grey")
    (request,) = server.chat_requests
    assert {"provider", "usage", "reasoning"}.isdisjoint(request.body)
    assert "x-title" not in request.headers and "http-referer" not in request.headers
    assert request.body["max_tokens"] == 2048


async def test_reasoning_can_be_turned_off_and_extra_body_merges(server):
    options = {"reasoning_max_tokens": 0, "extra_body": {"provider": {"order": ["Alibaba"]}}}
    async with client_for(server, openrouter=True, **options) as client:
        await client.critique(GREY, "grey")
    (request,) = server.chat_requests
    assert request.body["reasoning"] == {"effort": "none", "exclude": True}
    assert request.body["provider"] == {"require_parameters": True, "order": ["Alibaba"]}
    assert request.body["max_tokens"] == 2048


async def test_list_models_checks_reachability(server):
    async with client_for(server) as client:
        assert await client.list_models() == ["loopback/model"]


@pytest.mark.parametrize(
    ("provider", "base_url", "expected"),
    [
        ("auto", "https://openrouter.ai/api/v1", "openrouter"),
        ("auto", "http://localhost:11434/v1", "openai"),
        ("auto", "http://127.0.0.1:8000/v1", "openai"),
        ("openrouter", "http://127.0.0.1:8000/api/v1", "openrouter"),
    ],
)
def test_provider_is_picked_from_the_base_url(provider, base_url, expected):
    assert pick_provider(provider, base_url).id == expected


def test_constructor_rejects_bad_values_by_name():
    with pytest.raises(ValueError, match="provider"):
        VLMClient(provider="azure")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="timeout"):
        VLMClient(timeout=0)
    with pytest.raises(ValueError, match="max_retries"):
        VLMClient(max_retries=-1)


# -- prompt templates -----------------------------------------------------------------------------------


def test_prompt_templates_load_and_fill():
    assert {"describe", "describe_video", "critique", "revise"} <= set(prompt_names())
    assert prompt_placeholders("critique") == ["goal", "parameters"]
    assert "{goal}" in load_prompt("critique")
    filled = render_prompt("critique", goal="a red fox", parameters='{"steps": 4}')
    assert "a red fox" in filled and '{"steps": 4}' in filled and "{goal}" not in filled
    with pytest.raises(KeyError, match="goal"):
        render_prompt("critique", parameters="{}")
    with pytest.raises(FileNotFoundError, match="unknown prompt"):
        load_prompt("nope")
