"""API keys: `Authorization: Bearer <key>` -> the configured key entry, by SHA-256 digest.

Only digests are held in memory; a presented key is hashed once and the digests are compared with
`hmac.compare_digest`. No keys configured = an open gateway (the embedded default).
"""

from __future__ import annotations

import hashlib
import hmac

from sluicegate.config.schema import AuthConfig
from sluicegate.gateway.admission import ClientKey
from sluicegate.types import GatewayError, Outcome


def _unauthorized(message: str) -> GatewayError:
    return GatewayError(401, message, type="invalid_request_error", code="invalid_api_key", outcome=Outcome.REJECTED)


class KeyRing:
    def __init__(self, auth: AuthConfig) -> None:
        self._by_digest: dict[str, tuple[str, ClientKey]] = {}
        for entry in auth.keys:
            digest = entry.digest()
            key = ClientKey(entry.name, entry.models, entry.max_concurrent, entry.rpm, entry.admin)
            self._by_digest[digest] = (digest, key)

    @property
    def open(self) -> bool:
        return not self._by_digest

    def authenticate(self, authorization: str | None) -> ClientKey | None:
        """The key behind the header; None on an open gateway. Raises 401 when a valid key is required."""
        if self.open:
            return None
        if not authorization:
            raise _unauthorized("Missing API key: send it as 'Authorization: Bearer <key>'.")
        scheme, _, token = authorization.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise _unauthorized("Malformed Authorization header: expected 'Bearer <key>'.")
        digest = hashlib.sha256(token.encode()).hexdigest()
        found = self._by_digest.get(digest)
        if found is None or not hmac.compare_digest(found[0], digest):
            raise _unauthorized("Invalid API key.")
        return found[1]


def forbidden_model(key: ClientKey, model: str) -> GatewayError:
    return GatewayError(403, f"API key {key.name!r} may not use model {model!r}.", type="invalid_request_error",
                        code="model_not_allowed", param="model", outcome=Outcome.REJECTED)
