"""`refine` end to end: tiny real pipeline, the real openai client, a loopback critic that scores pixels."""

from __future__ import annotations

import json
import re
import threading
from pathlib import Path

import anyio
import numpy as np
import pytest
from mcp import Client
from openai_loopback import OpenAILoopback, RecordedRequest, Scripted, brightness_score
from PIL import Image
from pydantic import SecretStr

from imgtools_mcp.config import Settings
from imgtools_mcp.images.masks import blur_mask
from imgtools_mcp.infotext import parse_infotext
from imgtools_mcp.runs.refine.repair import decide
from imgtools_mcp.server import build_server
from imgtools_mcp.vlm import Critique

pytestmark = pytest.mark.anyio

KEY = "test-key"
SMALL = {"width": 64, "height": 64, "steps": 2}


def with_vlm(settings: Settings, base_url: str) -> Settings:
    return settings.model_copy(update={"vlm_base_url": base_url, "vlm_api_key": SecretStr(KEY)})


def marker_revision(request: RecordedRequest) -> dict:
    """Each revision's prompt carries a marker naming how many rounds the reviser saw."""
    rounds = len(re.findall(r"^Round \d+:", request.texts[0], flags=re.M))
    return {
        "rationale": f"saw {rounds} round(s); brighten it",
        "prompt": f"MARKER-{rounds} a brightly lit lighthouse",
        "negative_prompt": f"dark, gloomy {rounds}",
        "parameter_changes": {"steps": 99, "guidance_scale": 6.5, "sampler": "euler_a", "strength": 0.4, "notes": "more light"},
    }


def sidecar(path: str) -> dict:
    return json.loads(Path(path).with_suffix(".json").read_text())


def error_of(result) -> str:
    assert result.is_error, result.content
    return re.sub(r"^Error executing tool \w+: ", "", result.content[0].text)


async def test_refine_is_listed_as_open_world_and_needs_a_vlm_key(settings: Settings) -> None:
    no_key = settings.model_copy(update={"vlm_api_key": None})  # the default endpoint is OpenRouter
    async with Client(build_server(no_key)) as client:
        refine = {tool.name: tool for tool in (await client.list_tools()).tools}["refine"]
        # Listed as MCP reads a hint that is left out: open world (default true), not read-only (default false).
        assert refine.annotations.open_world_hint in (True, None) and not refine.annotations.read_only_hint
        assert {"goal", "prompt", "max_rounds", "target_score", "max_cost", "num_images", "background"} <= set(
            refine.input_schema["properties"]
        )
        assert refine.input_schema["required"] == ["goal"] and "best" in refine.output_schema["properties"]
        text = error_of(await client.call_tool("refine", {"goal": "a cat", **SMALL}))
        assert text.startswith("VLM: no API key") and "OPENROUTER_API_KEY" in text and "IMGTOOLS_VLM_BASE_URL" in text
    assert not list(no_key.output_dir.glob("*.png"))  # refused before making anything


async def test_refine_keeps_the_best_scoring_image_and_feeds_each_revision_forward(settings: Settings) -> None:
    progress: list[tuple[float, float | None, str | None]] = []

    async def on_progress(done: float, total: float | None, message: str | None) -> None:
        progress.append((done, total, message))

    with OpenAILoopback(api_key=KEY, revision=marker_revision) as loopback:
        async with Client(build_server(with_vlm(settings, loopback.base_url))) as client:
            result = await client.call_tool(
                "refine",
                {"goal": "a bright lighthouse", **SMALL, "seed": 11, "num_images": 2, "max_rounds": 3, "target_score": 10},
                progress_callback=on_progress,
            )
        assert loopback.problems == []
        requests = loopback.chat_requests
    assert not result.is_error, result.content[0].text
    out = result.structured_content
    assert out["state"] == "done" and out["stop_reason"] == "max_rounds"
    rounds = out["rounds"]
    assert [r["round"] for r in rounds] == [1, 2, 3]
    candidates = [c for r in rounds for c in r["candidates"]]
    assert len(candidates) == 6 and len({c["id"] for c in candidates}) == 6

    # The critic saw every candidate (and nothing else) and its scores are the ones reported.
    critiques = [r for r in requests if r.kind == "critique"]
    assert len(critiques) == 6 and all(r.image_sizes == [(64, 64)] for r in critiques)
    assert sorted(brightness_score(r.images[0]) for r in critiques) == sorted(c["score"] for c in candidates)

    # The best is the highest-scoring candidate of all rounds, recomputed from the PNGs on disk.
    on_disk = {c["id"]: brightness_score(Image.open(c["path"])) for c in candidates}
    for c in candidates:
        assert c["score"] == pytest.approx(on_disk[c["id"]], abs=0.05)  # JPEG on the wire moves the mean a little
    best = out["best"]
    assert best["score"] == max(c["score"] for c in candidates)
    assert on_disk[best["id"]] >= max(on_disk.values()) - 0.05
    assert brightness_score(Image.open(best["path"])) == on_disk[best["id"]]
    assert best["round"] == next(r["round"] for r in rounds if best["id"] in [c["id"] for c in r["candidates"]])
    assert [b.type for b in result.content] == ["text", "image", "resource_link"]
    assert result.content[2].uri == best["uri"]

    # Each revision reached the next round's generation: prompt, negative, and the parameters that passed the checks.
    revisions = [r for r in requests if r.kind == "revision"]
    assert len(revisions) == 2
    assert "Round 2:" in revisions[1].texts[0] and "a bright lighthouse" in revisions[1].texts[0]
    assert "MARKER-1" in revisions[1].texts[0]  # the history shows round 2's prompt to the reviser
    assert rounds[0]["prompt"] == "a bright lighthouse"
    for number in (2, 3):
        previous, this = rounds[number - 2], rounds[number - 1]
        marker = f"MARKER-{number - 1} a brightly lit lighthouse"
        assert previous["revision"]["prompt"] == this["prompt"] == marker
        assert this["negative_prompt"] == f"dark, gloomy {number - 1}"
        for candidate in this["candidates"]:
            prompt, negative, fields = parse_infotext(Image.open(candidate["path"]).text["parameters"])
            assert prompt == marker and negative == f"dark, gloomy {number - 1}"
            assert fields["Steps"] == "4" and float(fields["CFG scale"]) == 6.5
            meta = sidecar(candidate["path"])
            assert meta["tool"] == "refine" and meta["parameters"]["prompt"] == marker
            assert meta["refine"]["round"] == number
            # the parent is the best image when the round began
            best_before = max((c for r in rounds[: number - 1] for c in r["candidates"]), key=lambda c: c["score"])
            assert meta["parent"] == best_before["id"]
        assert this["parameters"]["seed"] == 11  # seeds stay fixed: rounds differ by what was revised
    applied = rounds[0]["revision"]
    assert applied["applied"] == {"steps": 4, "guidance_scale": 6.5, "sampler": "euler_a"}
    assert any(note.startswith("steps=99: capped at 4") for note in applied["ignored"])
    assert any(note.startswith("strength=0.4") for note in applied["ignored"])
    assert rounds[2]["revision"] is None
    assert sidecar(best["path"])["critique"]["score"] == best["score"]

    # Usage adds up over every critique and revision.
    billed = [r.usage for r in requests if r.usage]
    assert out["usage"]["requests"] == len(billed) == 8
    assert out["usage"]["prompt_tokens"] == sum(u["prompt_tokens"] for u in billed)

    # One progress bar over the loop: rounds x candidates x first-round steps, always rising.
    assert progress[-1][0] == progress[-1][1] == 3 * 2 * 2
    assert all(b[0] > a[0] for a, b in zip(progress, progress[1:]))
    messages = [m for _, _, m in progress]
    assert "round 1/3: step 1 / 2" in messages and "round 3/3: step 4 / 4" in messages
    assert "round 2/3: critiquing 2 candidate(s)" in messages and "round 1/3: revising the prompt" in messages


async def test_target_score_stops_early_without_revising(settings: Settings) -> None:
    with OpenAILoopback(api_key=KEY, scorer=lambda image: 9.0) as loopback:
        async with Client(build_server(with_vlm(settings, loopback.base_url))) as client:
            result = await client.call_tool("refine", {"goal": "anything", **SMALL, "num_images": 1, "target_score": 8.5})
        kinds = [r.kind for r in loopback.chat_requests]
    assert not result.is_error, result.content[0].text
    out = result.structured_content
    assert out["stop_reason"] == "target_score" and len(out["rounds"]) == 1
    assert out["best"]["score"] == 9.0 and out["rounds"][0]["revision"] is None
    assert kinds == ["critique"]
    assert "stopped: target_score" in result.content[0].text


async def test_max_cost_stops_once_the_budget_is_spent(settings: Settings) -> None:
    with OpenAILoopback(api_key=KEY) as loopback:
        async with Client(build_server(with_vlm(settings, loopback.openrouter_base_url))) as client:
            result = await client.call_tool(
                "refine", {"goal": "a lamp", **SMALL, "num_images": 1, "max_rounds": 5, "target_score": 10, "max_cost": 1e-9}
            )
        billed = sum(r.usage["cost"] for r in loopback.chat_requests if r.usage)
    out = result.structured_content
    assert out["stop_reason"] == "max_cost" and len(out["rounds"]) == 1
    assert out["usage"]["cost"] == pytest.approx(billed) and billed >= 1e-9


async def test_background_refine_reports_through_get_job(settings: Settings) -> None:
    with OpenAILoopback(api_key=KEY, revision=marker_revision) as loopback:
        async with Client(build_server(with_vlm(settings, loopback.base_url))) as client:
            ticket = await client.call_tool(
                "refine", {"goal": "a lamp", **SMALL, "num_images": 1, "max_rounds": 2, "target_score": 10, "background": True}
            )
            assert not ticket.is_error, ticket.content[0].text
            job_id = ticket.structured_content["job_id"]
            assert ticket.structured_content["state"] == "started" and job_id
            status = await client.call_tool("get_job", {"job_id": job_id, "wait_s": 60})
    job = status.structured_content
    assert job["state"] == "done" and job["tool"] == "refine" and job["total"] == 2 * 1 * 2
    result = job["result"]
    assert result["stop_reason"] == "max_rounds" and len(result["rounds"]) == 2
    assert result["rounds"][1]["prompt"].startswith("MARKER-1")
    assert result["best"]["id"] in {c["id"] for r in result["rounds"] for c in r["candidates"]}
    assert any(block.type == "image" for block in status.content)


async def test_background_refine_returns_its_job_before_the_model_is_resolved(settings: Settings) -> None:
    with OpenAILoopback(api_key=KEY) as loopback:
        async with Client(build_server(with_vlm(settings, loopback.base_url))) as client:
            refused = await client.call_tool("refine", {"goal": "a lamp", **SMALL, "width": 65, "background": True})
            assert "width" in error_of(refused)  # what needs no model still fails the call
            ticket = await client.call_tool(
                "refine", {"goal": "a lamp", **SMALL, "model": "nobody/not-in-cache", "max_rounds": 1, "background": True}
            )
            assert not ticket.is_error, ticket.content[0].text
            with anyio.fail_after(60):
                status = await client.call_tool("get_job", {"job_id": ticket.structured_content["job_id"], "wait_s": 30})
        assert loopback.chat_requests == []  # nothing was made, so nothing was critiqued
    job = status.structured_content
    assert job["state"] == "error" and job["error"].startswith("model:") and "nobody/not-in-cache" in job["error"], job


async def test_a_fresh_refine_reports_loading_before_its_first_step_on_one_rising_bar(settings: Settings) -> None:
    seen: list[tuple[float, float | None, str | None]] = []

    async def progress(done: float, total: float | None, message: str | None) -> None:
        seen.append((done, total, message))

    with OpenAILoopback(api_key=KEY, revision=marker_revision) as loopback:
        async with Client(build_server(with_vlm(settings, loopback.base_url))) as client:
            result = await client.call_tool(
                "refine", {"goal": "a lamp", **SMALL, "num_images": 1, "max_rounds": 2, "target_score": 10},
                progress_callback=progress,
            )
    assert not result.is_error, result.content[0].text
    values = [s[0] for s in seen]
    assert values == sorted(set(values)), seen
    first_step = next(i for i, s in enumerate(seen) if "step 1 /" in (s[2] or ""))
    assert first_step > 0 and all("load" in (s[2] or "") for s in seen[:first_step]), seen
    assert seen[first_step][0] == 1 and seen[-1][0] == seen[-1][1] == 4
    assert "round 1/2: critiquing 1 candidate(s)" in [message for _, _, message in seen]  # a hair above step 2


async def test_cancelling_a_background_refine_keeps_the_best_so_far(settings: Settings) -> None:
    revising, release = threading.Event(), threading.Event()

    def slow_revision(request: RecordedRequest) -> dict:
        revising.set()
        release.wait(30)
        return marker_revision(request)

    with OpenAILoopback(api_key=KEY, revision=slow_revision) as loopback:
        async with Client(build_server(with_vlm(settings, loopback.base_url))) as client:
            ticket = await client.call_tool(
                "refine", {"goal": "a lamp", **SMALL, "num_images": 2, "max_rounds": 3, "target_score": 10, "background": True}
            )
            job_id = ticket.structured_content["job_id"]
            with anyio.fail_after(60):
                assert await anyio.to_thread.run_sync(revising.wait, 60)
            cancelled = await client.call_tool("cancel_job", {"job_id": job_id})
            release.set()
    job = cancelled.structured_content
    assert job["state"] == "cancelled"
    result = job["result"]
    assert result["state"] == "cancelled" and result["stop_reason"] == "cancelled"
    assert len(result["rounds"]) == 1 and result["rounds"][0]["revision"] is None
    scores = {c["id"]: c["score"] for c in result["rounds"][0]["candidates"]}
    assert result["best"]["id"] in scores and result["best"]["score"] == max(scores.values())


async def test_a_vlm_failure_mid_loop_returns_the_best_so_far(settings: Settings) -> None:
    with OpenAILoopback(api_key=KEY) as loopback:
        # round 1: one critique and one revision answered; round 2's critique is refused
        loopback.script([Scripted(), Scripted(), Scripted.http_error(401)])
        async with Client(build_server(with_vlm(settings, loopback.base_url))) as client:
            result = await client.call_tool("refine", {"goal": "a lamp", **SMALL, "num_images": 1, "target_score": 10})
    assert not result.is_error, result.content[0].text
    out = result.structured_content
    assert out["stop_reason"] == "vlm_error" and len(out["rounds"]) == 2
    assert out["best"]["round"] == 1
    assert out["rounds"][1]["candidates"][0]["score"] is None and "401" in out["rounds"][1]["candidates"][0]["error"]
    assert any("401" in warning and "OPENROUTER_API_KEY" in warning for warning in out["warnings"])


async def test_a_vlm_failure_before_any_score_is_a_tool_error_naming_the_kept_images(settings: Settings) -> None:
    with OpenAILoopback(api_key=KEY) as loopback:
        loopback.script([Scripted.reply("no JSON here")] * 3)
        async with Client(build_server(with_vlm(settings, loopback.base_url))) as client:
            result = await client.call_tool("refine", {"goal": "a lamp", **SMALL, "num_images": 1})
            text = error_of(result)
            assert "does not match the Critique schema" in text and "the round-1 images are kept: " in text
            kept = text.rsplit(": ", 1)[1]
            assert (settings.output_dir / f"{kept}.png").is_file()
            # and the server keeps serving
            assert not (await client.call_tool("generate", {"prompt": "x", **SMALL})).is_error


async def test_refine_refuses_bad_arguments_before_generating(settings: Settings) -> None:
    with OpenAILoopback(api_key=KEY) as loopback:
        async with Client(build_server(with_vlm(settings, loopback.base_url))) as client:
            for arguments, start in (
                ({"goal": "x", "max_rounds": 9}, "max_rounds:"),
                ({"goal": "x", "target_score": 11}, "target_score:"),
                ({"goal": "x", "max_cost": 0}, "max_cost:"),
                ({"goal": "x", "num_images": 0}, "num_images:"),
                ({"goal": "", **SMALL}, "goal:"),
                ({"prompt": "no goal"}, "goal: required"),
                ({"goal": "x", "width": 60}, "width:"),
            ):
                assert error_of(await client.call_tool("refine", arguments)).startswith(start), arguments
        assert loopback.chat_requests == []
    assert not list(settings.output_dir.glob("*.png"))


# ----- repair rounds: inpaint the critic's problem regions, keep the rest -----

TOP_LEFT = {"problem": "a smudge top left", "bbox_2d": [0, 0, 500, 500], "prompt": "a clean white wall"}


def pixels(path: str | Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB")).astype(int)


async def test_a_repair_round_inpaints_only_the_regions_the_critic_named(settings: Settings) -> None:
    with OpenAILoopback(api_key=KEY, revision=marker_revision, regions=[TOP_LEFT]) as loopback:
        async with Client(build_server(with_vlm(settings, loopback.base_url))) as client:
            result = await client.call_tool(
                "refine",
                {"goal": "a lamp", **SMALL, "seed": 5, "num_images": 1, "max_rounds": 2, "target_score": 10, "strategy": "repair"},
            )
        assert loopback.problems == []
        revisions = [r for r in loopback.chat_requests if r.kind == "revision"]
    assert not result.is_error, result.content[0].text
    first, second = result.structured_content["rounds"]
    assert first["action"] == "regenerate" and first["action_reason"] == "the first round generates from the prompt"
    assert first["mask_id"] is None and first["regions"] == []
    assert second["action"] == "repair"
    assert second["action_reason"] == "strategy=repair: 1 region(s) covering 25% of the image"
    assert second["source_id"] == first["best_id"] and second["prompt"] == "a clean white wall"
    assert second["regions"] == [{**TOP_LEFT, "bbox_2d": [0.0, 0.0, 500.0, 500.0]}]
    assert "regenerate (the first round" in revisions[0].texts[0]  # the reviser sees what each round did

    # The mask is an output: the region's box at the image's size.
    mask = Image.open(settings.output_dir / f"{second['mask_id']}.png").convert("L")
    inside = np.asarray(mask) > 127
    assert inside[:32, :32].all() and not inside[32:, :].any() and not inside[:, 32:].any()

    # Pixels outside the (feathered) mask are the previous round's exactly; inside, they were repainted.
    before, after = pixels(first["candidates"][0]["path"]), pixels(second["candidates"][0]["path"])
    kept = np.asarray(blur_mask(mask, 4.0)) == 0
    assert kept.sum() > 0.5 * kept.size and (after[kept] == before[kept]).all()
    assert np.abs(after[inside] - before[inside]).mean() > 1

    repaired = second["candidates"][0]["path"]
    meta = sidecar(repaired)
    assert meta["parent"] == first["best_id"] and meta["refine"]["action"] == "repair"
    assert meta["parameters"]["mask_made"] == second["mask_id"] and meta["refine"]["regions"][0]["problem"] == TOP_LEFT["problem"]
    _, _, fields = parse_infotext(Image.open(repaired).text["parameters"])
    assert fields["Refine round"] == "2/2 (repair)" and "Mask" in fields


@pytest.mark.parametrize(
    ("strategy", "box", "score", "action", "reason"),
    [
        ("auto", [0, 0, 500, 500], 6.0, "repair", "auto: 1 region(s) covering 25% of the image and score 6: the problems are local"),
        ("auto", [0, 0, 1000, 800], 6.0, "regenerate", "auto: 1 region(s) covering 80% of the image, over 40%: the problems are not local"),
        ("auto", [0, 0, 500, 500], 3.0, "regenerate", "auto: score 3 is under 5: too far off to repair"),
        ("regenerate", [0, 0, 500, 500], 6.0, "regenerate", "strategy=regenerate"),
    ],
)
async def test_auto_repairs_local_problems_and_regenerates_otherwise(
    settings: Settings, strategy: str, box: list[int], score: float, action: str, reason: str
) -> None:
    region = {"problem": "a flaw", "bbox_2d": box, "prompt": None}
    with OpenAILoopback(api_key=KEY, scorer=lambda image: score, regions=[region]) as loopback:
        async with Client(build_server(with_vlm(settings, loopback.base_url))) as client:
            arguments = {"goal": "a lamp", **SMALL, "num_images": 1, "max_rounds": 2, "target_score": 10}
            result = await client.call_tool("refine", {**arguments, "strategy": strategy})
    assert not result.is_error, result.content[0].text
    second = result.structured_content["rounds"][1]
    assert (second["action"], second["action_reason"]) == (action, reason), second["action_reason"]
    made = {c["id"] for r in result.structured_content["rounds"] for c in r["candidates"]}
    outputs = {path.stem for path in settings.output_dir.glob("*.png")}
    if action == "repair":
        assert second["mask_id"] in outputs and second["regions"] and second["source_id"]
        assert second["prompt"] == "revised prompt after 1 round(s)"  # no region prompt: the revised prompt
    else:
        assert second["mask_id"] is None and second["regions"] == [] and second["source_id"] is None
        assert outputs == made  # no mask was made
        assert sidecar(second["candidates"][0]["path"])["parameters"].get("mask") is None


def critique_with(regions: list[dict], score: float = 6.0) -> Critique:
    return Critique.model_validate({
        "summary": "s", "problems": ["p"], "regions": regions, "prompt_adherence": score, "visual_quality": score,
        "score": score, "revised_prompt": "r", "negative_prompt_additions": [], "parameter_advice": {},
    })


def test_the_decision_when_repair_is_not_possible_or_did_not_help() -> None:
    local = critique_with([TOP_LEFT])
    assert decide("auto", None, can_inpaint=True, family="sd15").action == "regenerate"
    no_inpaint = decide("repair", local, can_inpaint=False, family="qwen-image")
    assert no_inpaint.action == "regenerate" and "(qwen-image) has no inpaint pipeline" in no_inpaint.reason
    empty = decide("repair", critique_with([]), can_inpaint=True, family="sd15")
    assert empty.action == "regenerate" and empty.reason == "strategy=repair: the critic named no local regions; regenerated"
    assert decide("auto", local, can_inpaint=True, family="sd15", repeated=True).action == "regenerate"
    again = decide("repair", local, can_inpaint=True, family="sd15", repeated=True)
    assert again.action == "repair" and again.reason.endswith("again, with the revised prompt")
    assert [region.prompt for region in again.regions] == [None]  # not the prompt that did not help
    # Two overlapping boxes count once: 25% + 25% - 6.25% overlap.
    overlapping = critique_with([TOP_LEFT, {**TOP_LEFT, "bbox_2d": [250, 250, 750, 750]}])
    assert "covering 44% of the image" in decide("auto", overlapping, can_inpaint=True, family="sd15").reason


async def test_a_bad_strategy_is_a_tool_error_naming_the_allowed_values(settings: Settings) -> None:
    with OpenAILoopback(api_key=KEY) as loopback:
        async with Client(build_server(with_vlm(settings, loopback.base_url))) as client:
            text = error_of(await client.call_tool("refine", {"goal": "x", **SMALL, "strategy": "fix"}))
        assert loopback.chat_requests == []
    assert text.startswith("strategy:") and all(name in text for name in ("'auto'", "'regenerate'", "'repair'"))


async def test_critique_returns_the_problem_regions_cleaned(settings: Settings) -> None:
    regions = [
        {"problem": "garbled sign", "bbox_2d": [600, 700, 1004, 900], "prompt": " a sign reading OPEN "},
        {"problem": "a sliver", "bbox_2d": [10, 10, 14, 500], "prompt": None},  # too thin: dropped
        {"problem": "in pixels", "bbox_2d": [0, 0, 1400, 300], "prompt": None},  # not on the grid: dropped
        {"problem": "everything", "bbox_2d": [0, 0, 1000, 1000], "prompt": None},  # the whole image: dropped
        {"problem": "hand", "bbox_2d": [400, 300, 200, 100], "prompt": None},  # corners swapped: put in order
    ]
    with OpenAILoopback(api_key=KEY, regions=regions) as loopback:
        async with Client(build_server(with_vlm(settings, loopback.base_url))) as client:
            made = (await client.call_tool("generate", {"prompt": "a shop", **SMALL})).structured_content["images"][0]
            result = await client.call_tool("critique", {"image": made["id"], "goal": "a shop with an OPEN sign"})
        assert loopback.problems == []  # the regions are in the strict schema the server was sent
        (request,) = loopback.chat_requests
    assert not result.is_error, result.content[0].text
    schema = request.body["response_format"]["json_schema"]["schema"]
    assert schema["properties"]["regions"]["items"]["required"] == ["problem", "bbox_2d", "prompt"]
    assert '"regions"' in request.texts[0] and "0-1000 grid" in request.texts[0]
    assert result.structured_content["critique"]["regions"] == [
        {"problem": "garbled sign", "bbox_2d": [600.0, 700.0, 1000.0, 900.0], "prompt": "a sign reading OPEN"},
        {"problem": "hand", "bbox_2d": [200.0, 100.0, 400.0, 300.0], "prompt": None},
    ]
    assert "Regions (0-1000 grid): garbled sign [600, 700, 1000, 900]; hand [200, 100, 400, 300]." in result.content[0].text
