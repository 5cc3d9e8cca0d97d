"""GET /gallery against a running HTTP server: the token and Host/Origin rules, then in Chromium the list, search,
filters, lineage and a background job's live progress."""

from __future__ import annotations

import math
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from browser_host import chromium_path, launch, require_playwright, screenshot_dir
from server_process import TOKEN, HttpServer, connect

async_api = require_playwright()
chromium_path()

pytestmark = [pytest.mark.anyio, pytest.mark.slow]
SMALL = {"width": 64, "height": 64, "steps": 2}
UI_TIMEOUT_MS = 60_000


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
async def server(tmp_path_factory: pytest.TempPathFactory, tiny_models: dict[str, Path]) -> AsyncIterator[HttpServer]:
    folder = tmp_path_factory.mktemp("gallery")
    running = HttpServer(tiny_models["sd15"], folder / "out", folder, IMGTOOLS_AUTH_TOKEN=TOKEN)
    await running.start()
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture(scope="module")
async def made(server: HttpServer) -> dict[str, str]:
    """Three outputs: two generated, one inpainted from the first (its child in the lineage)."""
    async with connect(server.url, TOKEN) as client:
        lighthouse = await client.call_tool("generate", {"prompt": "a red lighthouse", **SMALL, "seed": 1})
        forest = await client.call_tool("generate", {"prompt": "a green forest", **SMALL, "seed": 2})
        lighthouse_id = lighthouse.structured_content["images"][0]["id"]
        door = await client.call_tool("inpaint", {
            "prompt": "a lighthouse with a blue door", "image": lighthouse_id, **SMALL,
            "mask_shapes": [{"type": "rect", "x": 0.4, "y": 0.6, "width": 0.2, "height": 0.3}],
        })
    # generate_s covers 2 steps and the decode: an upper bound on a 64² step (a 128² one costs ~4x), to size a job
    # of ~8 s or more, at least 60 steps (7 s at 128² uncontended on 2 cores): the page polls every 3 s while no job
    # runs, so a shorter job, or one timed while other work shared the CPU, can end before it is seen twice.
    step_s = lighthouse.structured_content["timings"]["generate_s"] / 2
    return {
        "steps_for_a_few_seconds": str(max(60, min(150, math.ceil(8 / max(4 * step_s, 1e-3))))),
        "lighthouse": lighthouse_id,
        "forest": forest.structured_content["images"][0]["id"],
        "door": door.structured_content["images"][0]["id"],
    }


async def test_the_gallery_needs_the_token_and_keeps_the_host_and_origin_rules(server: HttpServer, made: dict[str, str]) -> None:
    bearer = {"Authorization": f"Bearer {TOKEN}"}
    async with httpx.AsyncClient(base_url=server.base) as http:
        page = await http.get("/gallery")
        assert page.status_code == 401 and 'name="token"' in page.text and TOKEN not in page.text
        for path in ("/gallery/api/images", "/gallery/api/jobs", f"/gallery/image/{made['forest']}", f"/gallery/thumb/{made['forest']}"):
            assert (await http.get(path)).status_code == 401, path
            assert (await http.get(path, headers={"Authorization": "Bearer wrong-token-0123456789"})).status_code == 401
        listed = await http.get("/gallery/api/images", headers=bearer)
        assert listed.status_code == 200 and listed.json()["total"] == 3
        full = await http.get(f"/gallery/image/{made['forest']}", headers=bearer)
        assert full.headers["content-type"] == "image/png" and full.content.startswith(b"\x89PNG")
        # DNS rebinding and cross-site pages get the same answers as at /mcp.
        assert (await http.get("/gallery", headers={**bearer, "Host": "evil.example"})).status_code == 421
        assert (await http.get("/gallery", headers={**bearer, "Origin": "http://evil.example"})).status_code == 403
        origin = {"Origin": server.base}
        wrong = await http.post("/gallery/login", data={"token": "not-the-token-at-all"}, headers=origin)
        assert wrong.status_code == 401 and "not right" in wrong.text
        assert (await http.post("/gallery/login", data={"token": TOKEN})).status_code == 403  # no Origin: not a browser form
        cross = await http.post("/gallery/login", data={"token": TOKEN}, headers={"Origin": "http://evil.example"})
        assert cross.status_code == 403
        login = await http.post("/gallery/login", data={"token": TOKEN}, headers=origin)
        assert login.status_code == 303 and login.headers["location"] == "/gallery"
        cookie = login.headers["set-cookie"]
        assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Path=/gallery" in cookie and TOKEN not in cookie
        value = login.cookies["imgtools_gallery"]
        assert (await http.get("/gallery", cookies={"imgtools_gallery": value})).status_code == 200
        assert (await http.get("/gallery/api/images", cookies={"imgtools_gallery": value})).status_code == 200
        # The cookie opens the gallery only: it is not a bearer token for /mcp.
        assert (await http.post("/mcp", headers={"Authorization": f"Bearer {value}", "Content-Type": "application/json"}, json={})).status_code == 401


async def test_the_gallery_lists_searches_filters_shows_lineage_and_follows_a_job(server: HttpServer, made: dict[str, str]) -> None:
    started = time.perf_counter()
    async with async_api.async_playwright() as playwright:
        browser = await launch(playwright)
        try:
            context = await browser.new_context(viewport={"width": 1200, "height": 860})
            page = await context.new_page()
            await page.goto(f"{server.base}/gallery")
            await page.fill("input[name=token]", TOKEN)
            await page.click("button[type=submit]")
            tiles = page.locator("#grid .tile")
            await page.wait_for_function("() => document.querySelectorAll('#grid .tile').length === 3", timeout=UI_TIMEOUT_MS)
            assert TOKEN not in page.url
            cookie = next(c for c in await context.cookies() if c["name"] == "imgtools_gallery")
            assert cookie["httpOnly"] and cookie["sameSite"] == "Strict" and cookie["value"] != TOKEN
            # Newest first: the inpaint was made last.
            assert [await tiles.nth(i).get_attribute("data-image") for i in range(3)] == [made["door"], made["forest"], made["lighthouse"]]
            thumb = tiles.first.locator("img")
            await thumb.evaluate("img => img.decode()")
            assert await thumb.evaluate("img => img.naturalWidth") == 64

            await page.fill("#q", "lighthouse")
            await page.wait_for_function("() => document.querySelectorAll('#grid .tile').length === 2", timeout=UI_TIMEOUT_MS)
            assert {await tiles.nth(i).get_attribute("data-image") for i in range(2)} == {made["door"], made["lighthouse"]}
            await page.fill("#q", "GREEN forest")
            await page.wait_for_function("() => document.querySelectorAll('#grid .tile').length === 1", timeout=UI_TIMEOUT_MS)
            assert await tiles.first.get_attribute("data-image") == made["forest"]
            await page.fill("#q", "")
            await page.wait_for_function("() => document.querySelectorAll('#grid .tile').length === 3", timeout=UI_TIMEOUT_MS)
            assert await page.locator("#family option").all_inner_texts() == ["All families", "sd1"]
            await page.select_option("#family", "sd1")
            await page.wait_for_function("() => document.querySelectorAll('#grid .tile').length === 3", timeout=UI_TIMEOUT_MS)
            assert await page.locator("#model option").all_inner_texts() == ["All models", "tiny-sd15"]
            await page.select_option("#model", "tiny-sd15")
            await page.fill("#q", "door")
            await page.wait_for_function("() => document.querySelectorAll('#grid .tile').length === 1", timeout=UI_TIMEOUT_MS)
            await page.fill("#q", "")
            await page.wait_for_function("() => document.querySelectorAll('#grid .tile').length === 3", timeout=UI_TIMEOUT_MS)
            async with httpx.AsyncClient(base_url=server.base, headers={"Authorization": f"Bearer {TOKEN}"}) as http:
                assert (await http.get("/gallery/api/images", params={"family": "sdxl"})).json()["total"] == 0
                assert (await http.get("/gallery/api/images", params={"model": "tiny-sd15", "q": "red"})).json()["total"] == 1

            # The inpaint's detail: lineage back to its parent, and the viewer's before/after inside the dialog.
            await page.click(f"#grid .tile[data-image='{made['door']}']")
            await page.locator("#detail[open]").wait_for(timeout=UI_TIMEOUT_MS)
            assert await page.locator(f"#lineage [data-lineage='{made['lighthouse']}']").count() == 1
            viewer = page.frame_locator("#viewer")
            await viewer.locator("[data-view=compare] svg[data-role=mask-outline] rect").wait_for(timeout=UI_TIMEOUT_MS)
            assert await viewer.locator("[data-role=actions]").count() == 0  # the gallery offers no tool calls
            await page.screenshot(path=str(screenshot_dir() / "gallery-detail.png"))
            await page.click(f"#lineage [data-lineage='{made['lighthouse']}']")
            await page.wait_for_function(
                f"() => document.getElementById('detail-id').textContent === '{made['lighthouse']}'", timeout=UI_TIMEOUT_MS
            )
            assert await page.locator(f"#lineage [data-lineage='{made['door']}']").count() == 1  # its child
            await page.click("#close")

            # A background job shows up with its progress advancing, and its images join the grid when it ends.
            async with connect(server.url, TOKEN) as client:
                job = await client.call_tool(
                    "generate",
                    {"prompt": "a slow sunrise", "width": 128, "height": 128, "steps": int(made["steps_for_a_few_seconds"]), "background": True},
                )
                job_id = job.structured_content["job_id"]
                await page.wait_for_function(
                    """(jobId) => {
                        const bar = document.querySelector(`.job[data-job="${jobId}"] [role=progressbar]`);
                        window.seenProgress = window.seenProgress || new Set();
                        if (bar) { const v = Number(bar.getAttribute('aria-valuenow')); if (v > 0 && v < 100) window.seenProgress.add(v); }
                        return window.seenProgress.size >= 2;
                    }""",
                    arg=job_id, polling=100, timeout=UI_TIMEOUT_MS,
                )
                await page.screenshot(path=str(screenshot_dir() / "gallery.png"))
                seen = sorted(await page.evaluate("() => [...window.seenProgress]"))
                assert seen[0] < seen[-1]
                for _ in range(5):
                    done = await client.call_tool("get_job", {"job_id": job_id, "wait_s": 60})
                    if done.structured_content["state"] != "running":
                        break
                assert done.structured_content["state"] == "done"
            await page.wait_for_function("() => document.querySelectorAll('#grid .tile').length === 4", timeout=UI_TIMEOUT_MS)
            assert await page.locator(f".job[data-job='{job_id}']").count() == 0
            # Phone width: everything wraps, nothing scrolls sideways.
            await page.set_viewport_size({"width": 390, "height": 800})
            assert await page.evaluate("() => document.documentElement.scrollWidth - document.documentElement.clientWidth") <= 0
        finally:
            await browser.close()
    print(f"gallery browser test: {time.perf_counter() - started:.1f} s")


async def test_imgtools_gallery_false_turns_it_off(tmp_path: Path, tiny_models: dict[str, Path]) -> None:
    off = HttpServer(tiny_models["sd15"], tmp_path / "out", tmp_path, IMGTOOLS_AUTH_TOKEN=TOKEN, IMGTOOLS_GALLERY="false")
    await off.start()
    try:
        async with httpx.AsyncClient(base_url=off.base, headers={"Authorization": f"Bearer {TOKEN}"}) as http:
            assert (await http.get("/gallery")).status_code == 404
            assert (await http.get("/gallery/api/images")).status_code == 404
            assert (await http.get("/health")).status_code == 200
    finally:
        off.stop()
