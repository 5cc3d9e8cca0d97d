"""One exception hierarchy for everything that can go wrong talking to the VLM or reading media."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .schemas import VLMUsage


class VLMError(Exception):
    """Base class; `usage` carries tokens/cost already spent when the call failed, so it is never lost."""

    def __init__(self, message: str, *, status_code: int | None = None, usage: VLMUsage | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status_code = status_code
        self.usage = usage


class VLMConfigError(VLMError):
    """The client is not configured well enough to make a call (for example no API key)."""


class VLMAuthError(VLMError):
    """The server refused the credentials (401/403): fix the key or its permissions."""


class VLMOutOfCredits(VLMAuthError):
    """402 from OpenRouter: the account has no credits left for this model."""


class VLMRateLimited(VLMError):
    """429, still rate limited after the client's retries."""


class VLMTimeout(VLMError):
    """No answer within the configured timeout, after retries."""


class VLMUnavailable(VLMError):
    """The server could not be reached or kept failing (5xx, connection errors, upstream provider errors)."""


class VLMRequestError(VLMError):
    """The server rejected the request itself (400/404/413/422): wrong model name, unsupported input, ..."""


class VLMBadReply(VLMError):
    """The model answered, but the answer is unusable (empty, not JSON, or breaks the schema) after retries."""


class MediaError(ValueError):
    """An image or video the VLM should see cannot be used; the message names the limit or the problem."""
