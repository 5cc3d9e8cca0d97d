"""What differs between OpenAI-compatible VLM servers, one small class per kind of server, picked by id."""

from __future__ import annotations

from typing import Any, ClassVar
from urllib.parse import urlparse


class GenericProvider:
    """Any OpenAI-compatible server (vLLM, llama.cpp, Ollama, LM Studio, OpenAI): standard fields only,
    since strict servers reject arguments they do not know."""

    id: ClassVar[str] = "openai"
    # Local servers usually accept any key, but the openai client refuses to send none at all.
    placeholder_key: ClassVar[str | None] = "not-needed"

    def headers(self, *, app_url: str | None, app_title: str | None) -> dict[str, str]:
        return {}

    def extra_body(self, *, json_schema: bool, reasoning_max_tokens: int | None) -> dict[str, Any]:
        return {}

    def max_tokens(self, answer_tokens: int, reasoning_max_tokens: int | None) -> int:
        return answer_tokens


class OpenRouterProvider(GenericProvider):
    """openrouter.ai: attribution headers, cost in usage, routing and reasoning controls."""

    id: ClassVar[str] = "openrouter"
    # OpenRouter always needs a real key; a placeholder would only turn into a confusing 401.
    placeholder_key: ClassVar[str | None] = None

    def headers(self, *, app_url: str | None, app_title: str | None) -> dict[str, str]:
        headers = {}
        if app_url:
            headers["HTTP-Referer"] = app_url
        if app_title:
            headers["X-Title"] = app_title
        return headers

    def extra_body(self, *, json_schema: bool, reasoning_max_tokens: int | None) -> dict[str, Any]:
        # exclude: reasoning text is of no use to us and would only add to the reply size.
        if reasoning_max_tokens is None:
            reasoning: dict[str, Any] = {"exclude": True}
        elif reasoning_max_tokens == 0:
            reasoning = {"effort": "none", "exclude": True}
        else:
            # A bounded budget so a thinking model (Qwen3.5) cannot spend max_tokens before answering.
            reasoning = {"max_tokens": reasoning_max_tokens, "exclude": True}
        body: dict[str, Any] = {"usage": {"include": True}, "reasoning": reasoning}
        if json_schema:
            # Without this OpenRouter may route to a provider that silently ignores response_format.
            body["provider"] = {"require_parameters": True}
        return body

    def max_tokens(self, answer_tokens: int, reasoning_max_tokens: int | None) -> int:
        # Reasoning tokens count against max_tokens, so the reasoning budget comes on top of the answer's.
        return answer_tokens + (reasoning_max_tokens or 0)


PROVIDERS: dict[str, type[GenericProvider]] = {cls.id: cls for cls in (GenericProvider, OpenRouterProvider)}


def pick_provider(provider: str, base_url: str) -> GenericProvider:
    """The provider named `provider`, or for "auto" the one the base URL's host implies."""
    if provider == "auto":
        host = (urlparse(base_url).hostname or "").lower()
        provider = "openrouter" if host == "openrouter.ai" or host.endswith(".openrouter.ai") else "openai"
    if provider not in PROVIDERS:
        raise ValueError(f"provider must be 'auto' or one of {', '.join(sorted(PROVIDERS))}, got {provider!r}")
    return PROVIDERS[provider]()
