"""Read a chat-completion reply: its answer text and usage, or the error it really carries."""

from __future__ import annotations

import json
import re
from typing import Any

from pydantic import BaseModel, ValidationError

from .errors import (
    VLMAuthError,
    VLMBadReply,
    VLMError,
    VLMOutOfCredits,
    VLMRateLimited,
    VLMRequestError,
    VLMTimeout,
    VLMUnavailable,
)
from .schemas import VLMUsage

KEY_HINT = "set OPENROUTER_API_KEY or IMGTOOLS_VLM_API_KEY"
# Thinking models served without a reasoning parser put their thoughts inline before the answer.
_THINK_BLOCK = re.compile(r"^\s*<think>.*?</think>\s*", re.DOTALL)
_CODE_FENCE = re.compile(r"^```[A-Za-z0-9_-]*\s*\n(.*?)\n?```$", re.DOTALL)


def error_for_status(status: int | None, detail: str, *, model: str, retries: int = 0) -> VLMError:
    """The exception for an HTTP status (or an error code inside a 200 reply), saying what to do about it."""
    retried = f" after {retries} retries" if retries else ""
    if status == 401:
        return VLMAuthError(
            f"the VLM server rejected the API key (401: {detail}); {KEY_HINT} to a valid key", status_code=401
        )
    if status == 402:
        return VLMOutOfCredits(
            f"the VLM account is out of credits (402: {detail}); add credits at https://openrouter.ai/settings/credits "
            "or choose a cheaper or free model with IMGTOOLS_VLM_MODEL",
            status_code=402,
        )
    if status == 403:
        return VLMAuthError(
            f"the VLM server refused the request (403: {detail}); the key may not have access to model {model!r}, "
            "or the input was flagged by moderation",
            status_code=403,
        )
    if status == 429:
        return VLMRateLimited(
            f"the VLM server is rate limiting requests{retried} (429: {detail}); try again later", status_code=429
        )
    if status == 408:
        return VLMTimeout(f"the VLM server timed out{retried} (408: {detail})", status_code=408)
    if status == 404:
        return VLMRequestError(
            f"the VLM server has no such endpoint or model {model!r} (404: {detail}); "
            "check IMGTOOLS_VLM_MODEL and IMGTOOLS_VLM_BASE_URL",
            status_code=404,
        )
    if status == 413:
        return VLMRequestError(
            f"the VLM server found the request too large (413: {detail}); send fewer or smaller images "
            "(max_frames, the pixel budget)",
            status_code=413,
        )
    if status is None or status >= 500:
        return VLMUnavailable(f"the VLM server failed{retried} ({status or 'error'}: {detail})", status_code=status)
    return VLMRequestError(f"the VLM server rejected the request ({status}: {detail})", status_code=status)


def error_detail(error: Any) -> str:
    """A short human message from an OpenAI/OpenRouter error object (or whatever the server sent)."""
    if isinstance(error, dict):
        message = str(error.get("message") or error.get("error") or json.dumps(error)[:300])
        metadata = error.get("metadata")
        if isinstance(metadata, dict) and metadata.get("provider_name"):
            message += f" [provider {metadata['provider_name']}]"
        return message
    return str(error)[:300] if error else "no details"


def usage_from_body(body: Any) -> VLMUsage:
    usage = body.get("usage") if isinstance(body, dict) else None
    if not isinstance(usage, dict):
        return VLMUsage(requests=1)
    cost = usage.get("cost")
    return VLMUsage(
        prompt_tokens=int(usage.get("prompt_tokens") or 0),
        completion_tokens=int(usage.get("completion_tokens") or 0),
        cost=float(cost) if isinstance(cost, (int, float)) else None,
        requests=1,
    )


def _embedded_error(error: Any, *, model: str) -> VLMError:
    """The exception for an error object inside a 200 reply; its `code` is usually an HTTP status."""
    code = error.get("code") if isinstance(error, dict) else None
    try:
        status = int(code) if code is not None else None
    except (TypeError, ValueError):
        status = None
    return error_for_status(status, error_detail(error), model=model)


def answer_text(body: Any, *, model: str) -> tuple[str, str | None]:
    """(answer text, finish_reason) of the first choice; raises the error a 200 reply can still carry."""
    if not isinstance(body, dict):
        raise VLMBadReply("the server's reply is not a JSON object")
    # OpenRouter reports upstream failures as an `error` object in an HTTP 200 body.
    if body.get("error"):
        raise _embedded_error(body["error"], model=model)
    choices = body.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        raise VLMBadReply("the reply has no choices")
    choice = choices[0]
    finish_reason = choice.get("finish_reason")
    if choice.get("error") or finish_reason == "error":
        error = choice.get("error") or {"message": "the provider stopped with finish_reason 'error'"}
        raise _embedded_error(error, model=model)
    message = choice.get("message") if isinstance(choice.get("message"), dict) else {}
    if message.get("refusal"):
        raise VLMRequestError(f"the model refused to answer: {message['refusal']}")
    content = message.get("content")
    if isinstance(content, list):
        # A few servers answer with content parts instead of one string.
        content = "".join(part.get("text", "") for part in content if isinstance(part, dict))
    text = _THINK_BLOCK.sub("", content or "", count=1).strip()
    if not text:
        if finish_reason == "length":
            raise VLMBadReply(
                "the reply was cut off at max_tokens before any answer (reasoning can use up the budget); "
                "raise max_output_tokens or lower reasoning_max_tokens"
            )
        raise VLMBadReply("the model returned an empty answer")
    return text, finish_reason


def parse_json_answer(text: str, schema: type[BaseModel], *, finish_reason: str | None) -> BaseModel:
    """Validate the answer against `schema`; only a surrounding markdown code fence is removed, nothing is guessed."""
    fenced = _CODE_FENCE.match(text.strip())
    payload = fenced.group(1) if fenced else text
    try:
        return schema.model_validate_json(payload)
    except ValidationError as err:
        if finish_reason == "length":
            raise VLMBadReply("the JSON answer was cut off at max_tokens; raise max_output_tokens") from err
        problems = "; ".join(
            f"{'.'.join(str(part) for part in issue['loc']) or 'reply'}: {issue['msg']}" for issue in err.errors()[:4]
        )
        raise VLMBadReply(f"the answer does not match the {schema.__name__} schema: {problems}") from err
