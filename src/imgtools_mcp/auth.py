"""Bearer-token authentication for Streamable HTTP: one shared secret from IMGTOOLS_AUTH_TOKEN."""

from __future__ import annotations

import hmac

from mcp.server.auth.provider import AccessToken
from mcp.server.auth.settings import AuthSettings
from pydantic import SecretStr

CLIENT_ID = "imgtools-bearer"


class StaticTokenVerifier:
    """Accepts exactly one token; the comparison takes the same time wherever the first difference is."""

    def __init__(self, token: SecretStr) -> None:
        self._expected = token.get_secret_value().encode()

    async def verify_token(self, token: str) -> AccessToken | None:
        # Headers may carry any latin-1 text; encode it the same way as the secret so compare_digest sees bytes.
        if hmac.compare_digest(token.encode("utf-8", "surrogateescape"), self._expected):
            return AccessToken(token=token, client_id=CLIENT_ID, scopes=[])
        return None


def auth_settings(base_url: str) -> AuthSettings:
    """The server is its own resource server; the verifier checks the token itself, so no audience check."""
    return AuthSettings(issuer_url=base_url, resource_server_url=f"{base_url}/mcp", validate_token_resource=False)
