"""The MCP App viewer in a real browser: a sweep explorer, a refine timeline and an inpaint before/after, each
rendered from a real server's results inside a sandboxed iframe of a spec-following test host."""

from __future__ import annotations

import json
import math
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from browser_host import AppsHost, apps_client, chromium_path, launch, require_playwright, screenshot_dir
from openai_loopback import OpenAILoopback, brightness_score
from pydantic import SecretStr

from imgtools_mcp.config import Settings
from imgtools_mcp.server import build_server

async_api = require_playwright()
chromium_path()  # skip the module, with the reason, where there is no Chromium

pytestmark = pytest.mark.anyio
SMALL = {"width": 64, "height": 64, "steps": 2}
KEY = "test-key"
UI_TIMEOUT_MS = 60_000


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
async def browser() -> AsyncIterator[Any]:
    started = time.perf_counter()
    async with async_api.async_playwright() as playwright:
        browser = await launch(playwright)
        yield browser
        await browser.close()
    print(f"test_viewer browser session: {time.perf_counter() - started:.1f} s")


@pytest.fixture(scope="module")
def loopback() -> Any:
    # Scores from the pixels, kept under 5 so every critique names a problem ("too dark") for the timeline to show.
    with OpenAILoopback(api_key=KEY, scorer=lambda image: round(brightness_score(image) / 2.5, 2)) as server:
        yield server


@pytest.fixture(scope="module")
def viewer_settings(tmp_path_factory: pytest.TempPathFactory, tiny_models: dict[str, Path], loopback: Any) -> Settings:
    return Settings(
        model=str(tiny_models["sd15"]), output_dir=tmp_path_factory.mktemp("viewer-out"), device="cpu", hf_offline=True,
        vlm_base_url=loopback.base_url, vlm_api_key=SecretStr(KEY),
    )


@pytest.fixture(scope="module")
async def client(viewer_settings: Settings) -> AsyncIterator[Any]:
    async with apps_client(build_server(viewer_settings)) as connected:
        yield connected


@pytest.fixture
async def host(browser: Any, client: Any) -> AsyncIterator[AppsHost]:
    opened = await AppsHost.open(browser, client)
    yield opened
    await opened.page.close()


def sidecar(settings: Settings, image_id: str) -> dict[str, Any]:
    return json.loads((settings.output_dir / f"{image_id}.json").read_text())


async def test_sweep_explorer_shows_every_cell_with_its_parameters_and_runs_an_action(
    host: AppsHost, client: Any, viewer_settings: Settings
) -> None:
    arguments = {
        "base": {"prompt": "a lighthouse at dusk", **SMALL, "seed": 7},
        "x": {"param": "guidance_scale", "values": [1.5, 6]},
        "y": {"param": "steps", "values": [1, 2]},
    }
    result = await client.call_tool("sweep", arguments)
    assert not result.is_error, result.content[0].text
    cells = result.structured_content["cells"]
    assert len(cells) == 4 and all(c["image"] for c in cells)

    app = await host.show("sweep", arguments, result)
    buttons = app.locator("[data-view=explorer] .cell")
    await buttons.first.wait_for(timeout=UI_TIMEOUT_MS)
    assert await buttons.count() == len(cells)
    # The grid image arrived through resources/read and has real pixels.
    await app.locator("img.grid").wait_for()
    assert await app.locator("img.grid").evaluate("img => img.decode().then(() => img.naturalWidth)") > 0
    for cell in cells:
        button = app.locator(f"[data-view=explorer] .cell[data-x='{cell['x']}'][data-y='{cell['y']}']")
        await button.hover()
        info = app.locator("[data-role=cell-info]")
        assert "null" not in await info.inner_text()
        for name in ("guidance_scale", "steps", "seed"):
            expected = cell["values"].get(name, cell["parameters"][name])
            shown = await info.locator(f"dd[data-param={name}]").inner_text()
            assert math.isclose(float(shown), float(expected)), (name, shown, expected)
    await host.page.locator("#app").screenshot(path=str(screenshot_dir() / "viewer-sweep.png"))

    # Keyboard: Tab reaches a cell, focus shows its parameters, Enter opens it at full size.
    chosen = cells[3]
    target = app.locator(f"[data-view=explorer] .cell[data-x='{chosen['x']}'][data-y='{chosen['y']}']")
    await target.focus()
    # "Use these settings" hands the cell's parameters to the assistant (ui/update-model-context).
    await app.locator("[data-action=use-settings]").click()
    await app.locator("[data-action=use-settings]", has_text="Sent to the assistant").wait_for(timeout=UI_TIMEOUT_MS)
    handed = await host.page.evaluate("() => window.hostLog.modelContext")
    assert handed["structuredContent"]["image_id"] == chosen["image"]["id"]
    assert handed["structuredContent"]["settings"] == sidecar(viewer_settings, chosen["image"]["id"])["parameters"]
    await target.focus()
    await target.press("Enter")
    detail = app.locator(f"[data-view=image][data-image='{chosen['image']['id']}']")
    await detail.wait_for(timeout=UI_TIMEOUT_MS)
    await app.locator("[data-view=zoom] img").evaluate("img => img.decode()")
    assert await app.locator("[data-view=zoom] img").evaluate("img => img.naturalWidth") == 64
    assert "Seed: " in await app.locator("[data-role=infotext]").inner_text()

    # "Vary seed" goes through the host to the app-only viewer_action, which starts generate in the background;
    # the view follows the job (get_job) to the new image.
    before = {p.stem for p in viewer_settings.output_dir.glob("*.png")}
    await app.locator("[data-action=vary_seed]").click()
    new_view = app.locator("[data-view=image]:not([data-image='%s'])" % chosen["image"]["id"])
    await new_view.wait_for(timeout=UI_TIMEOUT_MS)
    new_id = await new_view.get_attribute("data-image")
    assert new_id not in before and (viewer_settings.output_dir / f"{new_id}.png").is_file()
    assert [name for name, _ in host.calls if name != "get_job"] == ["viewer_action"]
    assert "get_job" in [name for name, _ in host.calls]
    made = sidecar(viewer_settings, new_id)["parameters"]
    source = sidecar(viewer_settings, chosen["image"]["id"])["parameters"]
    assert made["seed"] != source["seed"]
    for name in ("prompt", "steps", "guidance_scale", "width", "height"):
        assert made[name] == source[name], name


async def test_refine_timeline_marks_the_best_and_shows_scores_problems_and_prompt_changes(
    host: AppsHost, client: Any
) -> None:
    arguments = {"goal": "a bright lighthouse", **SMALL, "seed": 11, "num_images": 2, "max_rounds": 2, "target_score": 10}
    result = await client.call_tool("refine", arguments)
    assert not result.is_error, result.content[0].text
    refine = result.structured_content
    assert all(c["problems"] for r in refine["rounds"] for c in r["candidates"])
    app = await host.show("refine", arguments, result)
    rounds = app.locator("[data-view=timeline] > li")
    await rounds.first.wait_for(timeout=UI_TIMEOUT_MS)
    assert await rounds.count() == len(refine["rounds"]) == 2
    best = app.locator(".candidate.best")
    assert await best.count() == 1
    assert await best.get_attribute("data-candidate") == refine["best"]["id"]
    assert await app.locator(f"[data-view=timeline] > li.best[data-round='{refine['best']['round']}']").count() == 1
    for number, round_ in enumerate(refine["rounds"]):
        item = rounds.nth(number)
        for candidate in round_["candidates"]:
            card = item.locator(f"[data-candidate='{candidate['id']}']")
            text = await card.inner_text()
            assert f"{candidate['score']}/10" in text
            for problem in candidate["problems"]:
                assert problem in text
        # The round's prompt, shown as a word diff against the round before: without the deleted words it reads as sent.
        kept = await item.locator("[data-role=prompt]").evaluate(
            "el => { const c = el.cloneNode(true); c.querySelectorAll('del').forEach((d) => d.remove());"
            " return c.textContent.replace(/\\s+/g, ' ').trim(); }"
        )
        assert kept == " ".join(round_["prompt"].split())
    second = refine["rounds"][1]["prompt"]
    assert second != refine["rounds"][0]["prompt"]  # the loopback reviser rewrites it
    assert await rounds.nth(1).locator("[data-role=prompt] ins").count() > 0
    assert await rounds.nth(1).locator("[data-role=prompt] del").count() > 0
    await host.page.locator("#app").screenshot(path=str(screenshot_dir() / "viewer-refine.png"))
    # A candidate opens at full size; Escape goes back to the timeline.
    await app.locator(f"[data-candidate='{refine['best']['id']}']").click()
    await app.locator(f"[data-view=image][data-image='{refine['best']['id']}']").wait_for(timeout=UI_TIMEOUT_MS)
    await app.locator("[data-view=zoom]").press("Escape")
    await app.locator("[data-view=timeline]").wait_for(timeout=UI_TIMEOUT_MS)


async def test_inpaint_shows_before_after_with_the_mask_outline_while_a_background_job_runs(
    host: AppsHost, client: Any
) -> None:
    base = await client.call_tool("generate", {"prompt": "a red barn", **SMALL, "seed": 3})
    base_id = base.structured_content["images"][0]["id"]
    shape = {"type": "ellipse", "x": 0.25, "y": 0.5, "width": 0.5, "height": 0.25}
    arguments = {"prompt": "a blue door", "image": base_id, "mask_shapes": [shape], "steps": 2, "background": True}
    started = await client.call_tool("inpaint", arguments)
    assert not started.is_error and started.structured_content["job_id"]

    app = await host.show("inpaint", arguments, started)
    # The job ticket renders as live progress, polled through get_job, then turns into the result.
    compare = app.locator("[data-view=compare]")
    await compare.wait_for(timeout=UI_TIMEOUT_MS)
    assert "get_job" in [name for name, _ in host.calls]
    job = await client.call_tool("get_job", {"job_id": started.structured_content["job_id"]})
    new_id = job.structured_content["result"]["images"][0]["id"]
    assert await app.locator(f"[data-view=image][data-image='{new_id}']").count() == 1
    for which in ("before", "after"):
        image = compare.locator(f"img.{which}")
        await image.evaluate("img => img.decode()")
        assert await image.evaluate("img => img.naturalWidth") == 64
    ellipse = compare.locator("svg[data-role=mask-outline] ellipse")
    assert await ellipse.count() == 1
    geometry = {name: float(await ellipse.get_attribute(name)) for name in ("cx", "cy", "rx", "ry")}
    assert geometry == {"cx": 32.0, "cy": 40.0, "rx": 16.0, "ry": 8.0}
    # The slider moves the line between before and after, by keyboard too.
    slider = compare.locator("[data-role=compare-slider]")
    clip_before = await compare.locator("img.after").evaluate("img => img.style.clipPath")
    await slider.focus()
    for _ in range(10):
        await slider.press("ArrowRight")
    clip_after = await compare.locator("img.after").evaluate("img => img.style.clipPath")
    assert clip_before == "inset(0px 0px 0px 50%)" and clip_after == "inset(0px 0px 0px 60%)"
    assert "ellipse" in await app.locator("[data-role=mask-description]").inner_text()
    await host.page.locator("#app").screenshot(path=str(screenshot_dir() / "viewer-inpaint.png"))


async def test_the_viewer_fits_a_phone_screen(browser: Any, client: Any) -> None:
    host = await AppsHost.open(browser, client, width=390, height=800)
    try:
        result = await client.call_tool("generate", {"prompt": "a small boat", **SMALL, "seed": 5})
        app = await host.show("generate", {"prompt": "a small boat"}, result)
        await app.locator("[data-view=zoom]").wait_for(timeout=UI_TIMEOUT_MS)
        overflow = await app.locator("body").evaluate("b => b.scrollWidth - b.clientWidth")
        assert overflow <= 0
        # Zoom by keyboard: + doubles from fit, 0 fits again.
        viewport = app.locator("[data-view=zoom]")
        fitted = await app.locator("[data-role=zoom-level]").inner_text()
        await viewport.focus()
        await viewport.press("+")
        zoomed = await app.locator("[data-role=zoom-level]").inner_text()
        assert int(zoomed.rstrip("%")) > int(fitted.rstrip("%"))
        await viewport.press("0")
        assert await app.locator("[data-role=zoom-level]").inner_text() == fitted
    finally:
        await host.page.close()
