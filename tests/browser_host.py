"""Headless Chromium for the viewer and gallery tests, and a small MCP Apps host page that bridges the viewer to a real server.

The host page follows the ext-apps spec's host side: it embeds the `ui://` page in a sandboxed iframe,
answers `ui/initialize`, sends `ui/notifications/tool-input` and `tool-result` after the app's
`initialized`, and forwards the app's `tools/call`, `tools/list` and `resources/read` to the server
through an MCP client (via Playwright's `expose_function`), refusing app calls to tools whose
visibility leaves out "app".
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import pytest
from mcp import Client
from mcp.client.extension import advertise
from mcp.server.apps import APP_MIME_TYPE, EXTENSION_ID


def chromium_path() -> str:
    """The system Chromium (Debian's `chromium` package); tests skip with the reason when it is missing."""
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    pytest.skip("no Chromium on PATH: apt-get install chromium (.ci/run installs it)", allow_module_level=True)
    raise AssertionError("unreachable")


def require_playwright() -> Any:
    return pytest.importorskip("playwright.async_api", reason="playwright is not installed (pip install -e '.[test]')")


async def launch(playwright: Any) -> Any:
    return await playwright.chromium.launch(
        executable_path=chromium_path(), args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"]
    )


def screenshot_dir() -> Path:
    """Where screenshots go: $IMGTOOLS_SCREENSHOT_DIR, else a temp folder (printed by the tests that write there)."""
    folder = Path(os.environ.get("IMGTOOLS_SCREENSHOT_DIR") or Path(tempfile.gettempdir()) / "imgtools-screenshots")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def apps_client(server: Any, **kwargs: Any) -> Client:
    """An in-process client that negotiates MCP Apps, as an Apps host's client does."""
    return Client(server, extensions=[advertise(EXTENSION_ID, {"mimeTypes": [APP_MIME_TYPE]})], **kwargs)


HOST_PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>test host</title>
<style>body{margin:0;font:13px system-ui} iframe{border:1px solid #ccc;width:100%;height:700px;display:block}</style></head>
<body><iframe id="app" sandbox="allow-scripts" title="imgtools viewer"></iframe>
<script>
"use strict";
const frame = document.getElementById("app");
window.hostLog = { calls: [], modelContext: null, sizes: [], refused: [] };
let toolCall = null, appOnly = new Set();
function post(msg) { frame.contentWindow.postMessage(msg, "*"); }
window.mount = (html, call, appOnlyTools) => {
  // call: {name, arguments, result}: the tool call this view shows
  toolCall = call; appOnly = new Set(appOnlyTools);
  frame.srcdoc = html;
};
window.sendResult = (result) => post({ jsonrpc: "2.0", method: "ui/notifications/tool-result", params: result });
window.addEventListener("message", async (event) => {
  if (event.source !== frame.contentWindow) return;
  const msg = event.data;
  if (!msg || msg.jsonrpc !== "2.0" || !msg.method) return;
  const reply = (body) => post({ jsonrpc: "2.0", id: msg.id, ...body });
  switch (msg.method) {
    case "ui/initialize":
      return reply({ result: { protocolVersion: "2026-01-26", hostInfo: { name: "imgtools-test-host", version: "1" },
        hostCapabilities: { serverTools: {}, serverResources: {}, updateModelContext: { text: {} }, logging: {} },
        hostContext: { theme: "light", displayMode: "inline", platform: "web", toolInfo: { tool: { name: toolCall.name } } } } });
    case "ui/notifications/initialized":
      post({ jsonrpc: "2.0", method: "ui/notifications/tool-input", params: { arguments: toolCall.arguments } });
      return post({ jsonrpc: "2.0", method: "ui/notifications/tool-result", params: toolCall.result });
    case "ui/notifications/size-changed":
      // Flexible height, as the spec asks of hosts: the iframe follows the view's size.
      window.hostLog.sizes.push(msg.params); frame.style.height = `${Math.min(msg.params.height + 4, 2000)}px`; return;
    case "ui/update-model-context":
      window.hostLog.modelContext = msg.params; return reply({ result: {} });
    case "tools/call":
    case "tools/list":
    case "resources/read": {
      if (msg.method === "tools/call") {
        window.hostLog.calls.push(msg.params.name);
      }
      try { return reply({ result: await window.mcpForward(msg.method, msg.params || {}) }); }
      catch (e) { return reply({ error: { code: -32000, message: String(e.message || e) } }); }
    }
    default:
      if (msg.id !== undefined) reply({ error: { code: -32601, message: "not offered by the test host: " + msg.method } });
  }
});
</script></body></html>"""


class AppsHost:
    """One browser page acting as an MCP Apps host for one MCP client."""

    def __init__(self, page: Any, client: Client) -> None:
        self.page = page
        self.client = client
        self.app_only: set[str] = set()
        self.calls: list[tuple[str, dict[str, Any]]] = []

    @classmethod
    async def open(cls, browser: Any, client: Client, *, width: int = 1100, height: int = 800) -> "AppsHost":
        page = await browser.new_page(viewport={"width": width, "height": height})
        host = cls(page, client)
        await page.expose_function("mcpForward", host.forward)
        await page.set_content(HOST_PAGE)
        return host

    async def forward(self, method: str, params: dict[str, Any]) -> dict[str, Any]:
        """What a host does with the app's MCP requests: pass them to the server, app-visible tools only."""
        if method == "tools/call":
            name = params["name"]
            tools = {t.name: t for t in (await self.client.list_tools()).tools}
            visibility = ((tools[name].meta or {}).get("ui") or {}).get("visibility") if name in tools else None
            if name not in tools or (visibility is not None and "app" not in visibility):
                raise RuntimeError(f"tool {name} is not callable by the app")
            self.calls.append((name, params.get("arguments") or {}))
            result = await self.client.call_tool(name, params.get("arguments") or {})
            return result.model_dump(mode="json", by_alias=True, exclude_none=True)
        if method == "tools/list":
            listed = await self.client.list_tools()
            return listed.model_dump(mode="json", by_alias=True, exclude_none=True)
        if method == "resources/read":
            read = await self.client.read_resource(params["uri"])
            return read.model_dump(mode="json", by_alias=True, exclude_none=True)
        raise RuntimeError(f"unexpected {method}")

    async def show(self, name: str, arguments: dict[str, Any], result: Any) -> Any:
        """Render a tool result the way an Apps host does: read the tool's ui:// resource and mount it."""
        tools = {t.name: t for t in (await self.client.list_tools()).tools}
        uri = tools[name].meta["ui"]["resourceUri"]
        app_only = [t.name for t in tools.values() if ((t.meta or {}).get("ui") or {}).get("visibility") == ["app"]]
        read = await self.client.read_resource(uri)
        content = read.contents[0]
        assert content.mime_type == APP_MIME_TYPE
        call = {"name": name, "arguments": arguments, "result": result.model_dump(mode="json", by_alias=True, exclude_none=True)}
        await self.page.evaluate("([html, call, appOnly]) => window.mount(html, call, appOnly)", [content.text, call, app_only])
        return self.page.frame_locator("#app")


