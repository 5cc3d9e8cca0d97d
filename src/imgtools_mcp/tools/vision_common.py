"""What the VLM tools share: the configured client (or a clear error), usage lines and error lines."""

from __future__ import annotations

from mcp.server.mcpserver import Context
from mcp.server.mcpserver.exceptions import ToolError

from ..app import AppContext
from ..config import Settings
from ..runs.vlm_messages import usage_text, vlm_error_message  # noqa: F401 - the VLM tools read them from here
from ..vlm import VLMClient

SETUP_HINT = (
    "set OPENROUTER_API_KEY or IMGTOOLS_VLM_API_KEY, or point IMGTOOLS_VLM_BASE_URL at a local OpenAI-compatible server"
)


def require_vlm(app: AppContext) -> VLMClient:
    """The server's VLM client, refused up front when no call could succeed (so no work is wasted first)."""
    vlm = app.vlm
    if vlm is None:
        raise ToolError(f"VLM: no vision-language model is configured; {SETUP_HINT}")
    if not vlm.configured:
        raise ToolError(f"VLM: no API key for {vlm.base_url}; {SETUP_HINT}")
    return vlm


def build_vlm(settings: Settings) -> VLMClient:
    """The server's one VLM client; it makes no connection until the first VLM tool call."""
    key = settings.vlm_api_key.get_secret_value() if settings.vlm_api_key is not None else None
    return VLMClient(
        base_url=settings.vlm_base_url,
        model=settings.vlm_model,
        api_key=key,
        provider=settings.vlm_provider,
        timeout=settings.vlm_timeout_s,
        app_url=settings.vlm_app_url or None,
        app_title=settings.vlm_app_title or None,
    )


def wait_progress(ctx: Context) -> WaitCallback:
    """Progress notifications while the VLM thinks (hosts reset their request timeouts on progress)."""

    async def report(waited: float, allowed: float) -> None:
        await ctx.report_progress(waited, allowed, f"waiting for the VLM: {waited:.0f} s (at most {allowed:g} s)")

    return report
