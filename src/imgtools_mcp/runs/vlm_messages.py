"""One-line texts about VLM calls: what they cost, and what went wrong with what to fix."""

from __future__ import annotations

from ..vlm import VLMConfigError, VLMError, VLMUsage


def usage_text(usage: VLMUsage) -> str:
    """'2 VLM requests, 1234 tokens, $0.0012' (cost only when the provider reports it)."""
    text = f"{usage.requests} VLM request{'s' if usage.requests != 1 else ''}, {usage.prompt_tokens + usage.completion_tokens} tokens"
    if usage.cost is not None:
        text += f", ${usage.cost:.4f}"
    return text


def vlm_error_message(exc: VLMError) -> str:
    """One line for a failed VLM call: what went wrong, what to set or fix, and what it had already spent."""
    message = f"VLM: {exc.message}"
    if isinstance(exc, VLMConfigError) and "IMGTOOLS_VLM_BASE_URL" not in message:
        message += ", or point IMGTOOLS_VLM_BASE_URL at a local OpenAI-compatible server"
    if exc.usage is not None and exc.usage.requests:
        message += f" ({usage_text(exc.usage)} spent)"
    return message.replace("\n", " ")
