"""Bearer-token authentication for Streamable HTTP: one shared secret from IMGTOOLS_AUTH_TOKEN."""

from __future__ import annotations

import hashlib
import hmac

from mcp.server.auth.provider import AccessToken
from mcp.server.auth.settings import AuthSettings
from pydantic import SecretStr

CLIENT_ID = "imgtools-bearer"


class StaticTokenVerifier:
    """Accepts exactly one token; the comparison takes the same time wherever the first difference is."""

    def __init__(self, token: SecretStr) -> None:
        self._expected = _digest(token.get_secret_value())

    async def verify_token(self, token: str) -> AccessToken | None:
        # Digests of equal length, compared in constant time: neither the content nor the length of the secret leaks.
        if hmac.compare_digest(_digest(token), self._expected):
            return AccessToken(token=token, client_id=CLIENT_ID, scopes=[])
        return None


def _digest(value: str) -> bytes:
    return hashlib.sha256(value.encode("utf-8", "surrogateescape")).digest()


def auth_settings(base_url: str) -> AuthSettings:
    """Bearer-token settings that advertise no OAuth: a static token has no authorization server to point at.

    With a resource server URL the SDK would answer 401 with `resource_metadata=` and serve
    /.well-known/oauth-protected-resource naming `issuer_url` as the authorization server, and OAuth-aware
    clients (the MCP Inspector) would then start an interactive OAuth flow against a server that does not exist.
    Without one, a 401 says only `Bearer`; `issuer_url` is required by the model but is published nowhere.
    """
    return AuthSettings(issuer_url=base_url, resource_server_url=None, validate_token_resource=False)
