"""describe_image, describe_video, critique and the MCP prompts, through the MCP client against the loopback VLM."""

from __future__ import annotations

import base64
import functools
import io
import re
import threading
from collections.abc import AsyncIterator, Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from mcp import Client
from openai_loopback import OpenAILoopback, Scripted, brightness_score
from PIL import Image, ImageStat
from pydantic import SecretStr
from test_vlm_media import read_index, write_video

from imgtools_mcp.config import Settings
from imgtools_mcp.server import build_server

pytestmark = pytest.mark.anyio

KEY = "test-key"
SMALL = {"width": 64, "height": 64, "steps": 2}


@pytest.fixture
def loopback() -> Iterator[OpenAILoopback]:
    with OpenAILoopback(api_key=KEY) as server:
        yield server
        # Every request the tools made, retried or not, had a valid OpenAI shape.
        assert server.problems == []


def with_vlm(settings: Settings, base_url: str, key: str | None = KEY) -> Settings:
    return settings.model_copy(update={"vlm_base_url": base_url, "vlm_api_key": SecretStr(key) if key else None})


@pytest.fixture
async def vlm_client(settings: Settings, loopback: OpenAILoopback) -> AsyncIterator[Client]:
    async with Client(build_server(with_vlm(settings, loopback.base_url))) as connected:
        yield connected


def png_data_url(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def mean_rgb(image: Image.Image) -> tuple[float, ...]:
    return tuple(ImageStat.Stat(image.convert("RGB")).mean)


def billed(loopback: OpenAILoopback) -> dict[str, int]:
    requests = [r for r in loopback.chat_requests if r.usage]
    return {
        "prompt_tokens": sum(r.usage["prompt_tokens"] for r in requests),
        "completion_tokens": sum(r.usage["completion_tokens"] for r in requests),
        "requests": len(requests),
    }


def error_of(result) -> str:
    """The one-line message of a tool error, without the SDK's "Error executing tool <name>: " prefix."""
    assert result.is_error, result.content
    text = result.content[0].text
    assert "\n" not in text, text
    return re.sub(r"^Error executing tool \w+: ", "", text)


async def make_output(client: Client, **arguments) -> dict:
    result = await client.call_tool("generate", {"prompt": "a lighthouse", **SMALL, "seed": 3, **arguments})
    assert not result.is_error, result.content[0].text
    return result.structured_content["images"][0]


# -- listing ------------------------------------------------------------------------------------------


async def test_vlm_tools_are_listed_read_only_and_open_world(vlm_client: Client) -> None:
    tools = {tool.name: tool for tool in (await vlm_client.list_tools()).tools}
    for name in ("describe_image", "describe_video", "critique"):
        annotations = tools[name].annotations
        # open world is MCP's default for a hint left out of the list
        assert annotations.read_only_hint is True and annotations.open_world_hint in (True, None), name
        assert tools[name].output_schema is not None and "usage" in tools[name].output_schema["properties"], name
    assert tools["describe_image"].input_schema["required"] == ["images"]
    assert set(tools["describe_video"].input_schema["properties"]) == {"video", "question", "fps", "max_frames"}
    assert set(tools["critique"].input_schema["required"]) == {"image", "goal"}


# -- describe_image -------------------------------------------------------------------------------------


async def test_describe_image_sends_every_image_and_the_question(vlm_client: Client, loopback: OpenAILoopback) -> None:
    output = await make_output(vlm_client)
    red = Image.new("RGB", (100, 50), (250, 10, 10))
    result = await vlm_client.call_tool(
        "describe_image", {"images": [output["id"], png_data_url(red)], "question": "Which one is red?"}
    )
    assert not result.is_error, result.content[0].text
    (request,) = loopback.chat_requests
    assert request.image_sizes == [(64, 64), (100, 50)]
    # What the server decoded is the output's pixels and the red image, not something else of that size.
    generated = Image.open(output["path"])
    assert max(abs(a - b) for a, b in zip(mean_rgb(request.images[0]), mean_rgb(generated))) < 3
    assert max(abs(a - b) for a, b in zip(mean_rgb(request.images[1]), (250, 10, 10))) < 3
    assert "Which one is red?" in request.texts[0]
    structured = result.structured_content
    assert structured["text"].startswith("image 1: size=64x64") and "image 2: size=100x50" in structured["text"]
    assert structured["text"] in result.content[0].text
    assert [i["output_id"] for i in structured["images"]] == [output["id"], None]
    usage = structured["usage"]
    assert {k: usage[k] for k in ("prompt_tokens", "completion_tokens", "requests")} == billed(loopback)
    assert usage["prompt_tokens"] > 0 and usage["cost"] is None


async def test_cost_is_reported_when_the_provider_reports_it(settings: Settings, loopback: OpenAILoopback) -> None:
    async with Client(build_server(with_vlm(settings, loopback.openrouter_base_url))) as client:
        result = await client.call_tool("describe_image", {"images": [png_data_url(Image.new("RGB", (32, 32)))]})
    assert not result.is_error, result.content[0].text
    (request,) = loopback.chat_requests
    assert result.structured_content["usage"]["cost"] == pytest.approx(request.usage["cost"])
    assert "$" in result.content[0].text


async def test_bad_image_reference_names_the_parameter(vlm_client: Client, loopback: OpenAILoopback) -> None:
    result = await vlm_client.call_tool("describe_image", {"images": [png_data_url(Image.new("RGB", (8, 8))), "nope.png"]})
    assert error_of(result).startswith("`images[1]`: cannot use 'nope.png'")
    empty = await vlm_client.call_tool("describe_image", {"images": []})
    assert "images" in error_of(empty)
    assert loopback.chat_requests == []


# -- errors at the tool level ------------------------------------------------------------------------------


async def test_no_key_is_a_clear_error_and_image_tools_keep_working(settings: Settings) -> None:
    # The default endpoint is OpenRouter, which needs a key; the explicit None beats any key in the environment.
    no_key = settings.model_copy(update={"vlm_api_key": None})
    async with Client(build_server(no_key)) as client:
        for name, arguments in (
            ("describe_image", {"images": ["x"]}),
            ("critique", {"image": "x", "goal": "a cat"}),
            ("describe_video", {"video": "x.mp4"}),
        ):
            result = await client.call_tool(name, arguments)
            text = error_of(result)
            assert "OPENROUTER_API_KEY" in text and "IMGTOOLS_VLM_API_KEY" in text and "IMGTOOLS_VLM_BASE_URL" in text, text
        generated = await client.call_tool("generate", {"prompt": "still works", **SMALL})
        assert not generated.is_error


async def test_401_is_an_immediate_error_saying_what_to_fix(settings: Settings, loopback: OpenAILoopback) -> None:
    async with Client(build_server(with_vlm(settings, loopback.base_url, key="wrong-key"))) as client:
        result = await client.call_tool("describe_image", {"images": [png_data_url(Image.new("RGB", (8, 8)))]})
        text = error_of(result)
        assert text.startswith("VLM: the VLM server rejected the API key (401") and "OPENROUTER_API_KEY" in text
        assert len(loopback.chat_requests) == 1  # not retried
        # the server keeps serving
        assert not (await client.call_tool("generate", {"prompt": "x", **SMALL})).is_error


async def test_402_and_403_say_what_to_do(vlm_client: Client, loopback: OpenAILoopback) -> None:
    image = png_data_url(Image.new("RGB", (8, 8)))
    loopback.script([Scripted.http_error(402, "Insufficient credits"), Scripted.http_error(403, "no access")])
    credits = await vlm_client.call_tool("describe_image", {"images": [image]})
    assert "out of credits" in error_of(credits) and "IMGTOOLS_VLM_MODEL" in error_of(credits)
    denied = await vlm_client.call_tool("describe_image", {"images": [image]})
    assert "403" in error_of(denied) and "moderation" in error_of(denied)
    assert len(loopback.chat_requests) == 2


async def test_429_is_retried_then_answers(vlm_client: Client, loopback: OpenAILoopback) -> None:
    loopback.script([Scripted.http_error(429, retry_after=0.01), Scripted.http_error(503, retry_after=0.01)])
    result = await vlm_client.call_tool("describe_image", {"images": [png_data_url(Image.new("RGB", (8, 8)))]})
    assert not result.is_error, result.content[0].text
    assert [r.status for r in loopback.chat_requests] == [429, 503, 200]
    assert result.structured_content["usage"]["requests"] == 1  # only the answered request was billed


async def test_error_inside_a_200_reply_is_retried_then_reported(vlm_client: Client, loopback: OpenAILoopback) -> None:
    image = png_data_url(Image.new("RGB", (8, 8)))
    loopback.script([Scripted.error_in_200(502)])
    recovered = await vlm_client.call_tool("describe_image", {"images": [image]})
    assert not recovered.is_error and recovered.structured_content["usage"]["requests"] == 2
    loopback.script([Scripted.error_in_200(502), Scripted.error_in_choice(503)])
    failed = await vlm_client.call_tool("describe_image", {"images": [image]})
    text = error_of(failed)
    assert text.startswith("VLM: the VLM server failed") and "after 2 tries" in text and "\n" not in text
    assert "2 VLM requests" in text  # what the failure already spent is reported
    assert len(loopback.chat_requests) == 4


async def test_critique_bad_json_is_retried_then_reported(vlm_client: Client, loopback: OpenAILoopback) -> None:
    output = await make_output(vlm_client)
    loopback.script([Scripted.reply("Looks great!")])
    recovered = await vlm_client.call_tool("critique", {"image": output["id"], "goal": "a lighthouse"})
    assert not recovered.is_error, recovered.content[0].text
    assert recovered.structured_content["usage"]["requests"] == 2
    loopback.script([Scripted.reply('{"score": 7}')] * 3)
    failed = await vlm_client.call_tool("critique", {"image": output["id"], "goal": "a lighthouse"})
    assert "does not match the Critique schema" in error_of(failed) and "after 3 tries" in error_of(failed)
    assert len(loopback.chat_requests) == 5


# -- critique -------------------------------------------------------------------------------------------


async def test_critique_of_an_output_reads_its_sidecar_parameters(vlm_client: Client, loopback: OpenAILoopback) -> None:
    output = await make_output(vlm_client, prompt="a lighthouse at dusk", negative_prompt="fog")
    result = await vlm_client.call_tool("critique", {"image": output["uri"], "goal": "a lighthouse at dusk, warm light"})
    assert not result.is_error, result.content[0].text
    (request,) = loopback.chat_requests
    assert request.kind == "critique" and request.image_sizes == [(64, 64)]
    sent = request.texts[0]
    assert "a lighthouse at dusk, warm light" in sent and '"negative_prompt": "fog"' in sent and '"steps": 2' in sent
    structured = result.structured_content
    assert structured["parameters_source"] == "sidecar" and structured["parameters"]["seed"] == 3
    critique = structured["critique"]
    # The loopback scores the brightness of the pixels it was sent: the output's pixels.
    assert critique["score"] == pytest.approx(brightness_score(request.images[0]))
    assert critique["score"] == pytest.approx(brightness_score(Image.open(output["path"])), abs=0.05)
    assert {"problems", "revised_prompt", "negative_prompt_additions", "parameter_advice", "summary"} <= set(critique)
    assert critique["parameter_advice"]["sampler"] == "euler_a"
    assert f"score {critique['score']:g}/10" in result.content[0].text


async def test_critique_with_given_parameters_of_a_data_url(vlm_client: Client, loopback: OpenAILoopback) -> None:
    white = png_data_url(Image.new("RGB", (48, 32), (255, 255, 255)))
    result = await vlm_client.call_tool(
        "critique", {"image": white, "goal": "a white wall", "parameters": {"prompt": "white wall", "steps": 9}}
    )
    assert not result.is_error, result.content[0].text
    structured = result.structured_content
    assert structured["parameters_source"] == "request" and structured["critique"]["score"] == pytest.approx(10.0)
    assert structured["critique"]["problems"] == []
    assert '"steps": 9' in loopback.chat_requests[0].texts[0]
    missing_goal = await vlm_client.call_tool("critique", {"image": white})
    assert "goal: required" in error_of(missing_goal)


# -- describe_video -------------------------------------------------------------------------------------


async def test_describe_video_samples_frames_at_the_requested_times(
    vlm_client: Client, loopback: OpenAILoopback, settings: Settings
) -> None:
    settings.output_dir.mkdir(parents=True, exist_ok=True)
    video = write_video(settings.output_dir / "clip.mp4", 30)  # 3 s at 10 fps, each frame spells its index
    result = await vlm_client.call_tool("describe_video", {"video": str(video), "fps": 1, "question": "What changes?"})
    assert not result.is_error, result.content[0].text
    (request,) = loopback.chat_requests
    assert request.texts[1:] == ["t=0.00s", "t=1.00s", "t=2.00s"]
    assert [read_index(image) for image in request.images] == [0, 10, 20]
    assert "What changes?" in request.texts[0] and "3 frames" in request.texts[0]
    structured = result.structured_content
    assert [f["timestamp_s"] for f in structured["frames"]] == [0.0, 1.0, 2.0]
    assert structured["video"]["duration_s"] == pytest.approx(3.0)
    assert (structured["video"]["width"], structured["video"]["height"]) == (64, 48)
    assert structured["usage"]["requests"] == 1
    assert "t = 0.00, 1.00, 2.00 s" in result.content[0].text

    # Without fps, max_frames frames at the centres of equal slices; a relative path is under the output folder.
    spread = await vlm_client.call_tool("describe_video", {"video": "clip.mp4", "max_frames": 3})
    assert not spread.is_error, spread.content[0].text
    assert [read_index(image) for image in loopback.chat_requests[-1].images] == [5, 15, 25]
    assert [f["timestamp_s"] for f in spread.structured_content["frames"]] == [0.5, 1.5, 2.5]


async def test_describe_video_from_a_data_url(vlm_client: Client, loopback: OpenAILoopback, tmp_path: Path) -> None:
    video = write_video(tmp_path / "inline.webm", 20, codec="libvpx-vp9")
    url = "data:video/webm;base64," + base64.b64encode(video.read_bytes()).decode()
    result = await vlm_client.call_tool("describe_video", {"video": url, "fps": 2})
    assert not result.is_error, result.content[0].text
    assert [read_index(image) for image in loopback.chat_requests[0].images] == [0, 5, 10, 15]


async def test_describe_video_refuses_what_it_cannot_use(
    vlm_client: Client, loopback: OpenAILoopback, settings: Settings, tmp_path: Path
) -> None:
    outside = write_video(tmp_path / "outside.mp4", 5)
    result = await vlm_client.call_tool("describe_video", {"video": str(outside)})
    assert error_of(result).startswith("`video`:") and "outside the allowed input roots" in error_of(result)
    settings.output_dir.mkdir(parents=True, exist_ok=True)
    (settings.output_dir / "notes.mp4").write_bytes(b"this is not a video")
    broken = await vlm_client.call_tool("describe_video", {"video": "notes.mp4"})
    assert error_of(broken).startswith("video: video could not be opened")
    output = await make_output(vlm_client)
    image_id = await vlm_client.call_tool("describe_video", {"video": output["id"]})
    assert "image output id" in error_of(image_id)
    bad_fps = await vlm_client.call_tool("describe_video", {"video": "x.mp4", "fps": 0})
    assert error_of(bad_fps).startswith("fps:")
    too_many = await vlm_client.call_tool("describe_video", {"video": "x.mp4", "max_frames": 1000})
    assert error_of(too_many).startswith("max_frames:")
    assert loopback.chat_requests == []


# -- MCP prompts ----------------------------------------------------------------------------------------


async def test_prompts_are_listed_and_rendered_from_the_templates(vlm_client: Client) -> None:
    prompts = {prompt.name: prompt for prompt in (await vlm_client.list_prompts()).prompts}
    assert {"art_direct", "explore_look", "describe_this_video"} <= set(prompts)
    arguments = {a.name: a for a in prompts["art_direct"].arguments}
    assert arguments["goal"].required and not arguments["max_rounds"].required and arguments["goal"].description

    art = await vlm_client.get_prompt("art_direct", {"goal": "a fox in snow, golden hour", "max_rounds": "4"})
    text = art.messages[0].content.text
    assert art.messages[0].role == "user"
    assert "a fox in snow, golden hour" in text and "`refine`" in text and "max_rounds=4" in text and "{" not in text

    look = await vlm_client.get_prompt("explore_look", {"description": "moody teal-and-orange film noir"})
    look_text = look.messages[0].content.text
    assert "moody teal-and-orange film noir" in look_text and "`sweep`" in look_text and "tools' defaults" in look_text

    video = await vlm_client.get_prompt("describe_this_video", {"video": "clip.mp4", "question": "Who enters?"})
    video_text = video.messages[0].content.text
    assert "clip.mp4" in video_text and "`describe_video`" in video_text and "Who enters?" in video_text


async def test_describe_video_downloads_an_http_url_within_the_size_cap(
    settings: Settings, loopback: OpenAILoopback, tmp_path: Path
) -> None:
    write_video(tmp_path / "web.mp4", 20)

    class Handler(SimpleHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path == "/huge.mp4":  # says it is 200 MB; the download must stop at the header
                self.send_response(200)
                self.send_header("Content-Type", "video/mp4")
                self.send_header("Content-Length", str(200 * 1024 * 1024))
                self.end_headers()
                return
            super().do_GET()

        def log_message(self, *args) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(tmp_path)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    # The video server is on loopback, which URLs reach only when IMGTOOLS_ALLOW_PRIVATE_URLS names it.
    allowed = with_vlm(settings, loopback.base_url).model_copy(update={"allow_private_urls": ["127.0.0.1"]})
    try:
        async with Client(build_server(allowed)) as vlm_client:
            base = f"http://127.0.0.1:{server.server_address[1]}"
            result = await vlm_client.call_tool("describe_video", {"video": f"{base}/web.mp4", "fps": 1})
            assert not result.is_error, result.content[0].text
            assert [read_index(image) for image in loopback.chat_requests[0].images] == [0, 10]
            assert result.structured_content["video"]["reference"] == f"{base}/web.mp4"
            huge = error_of(await vlm_client.call_tool("describe_video", {"video": f"{base}/huge.mp4"}))
            assert huge.startswith("`video`:") and "209715200 bytes exceeds the 100 MiB limit" in huge
            missing = error_of(await vlm_client.call_tool("describe_video", {"video": f"{base}/missing.mp4"}))
            assert "could not download it" in missing  # the same text as any failed or refused fetch
    finally:
        server.shutdown()
        server.server_close()
    assert len(loopback.chat_requests) == 1
