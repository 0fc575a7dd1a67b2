"""Who is calling: a bearer token → its tenant, compared in constant time.

The config holds only SHA-256 hashes of tokens, so a leaked config (or database, or
log) gives no one a token. A presented token is hashed once and compared with
:func:`hmac.compare_digest` against every tenant's hash, without stopping at a match:
the time taken says neither whether the token was right nor which tenant it named.
Tokens are never logged, stored or kept past the call.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable

from rlm.service.settings import Tenant

#: A header longer than this is no token of ours; it is not even hashed.
_MAX_HEADER = 4096


def token_hash(token: str) -> str:
    """The hex SHA-256 of a token's UTF-8 bytes: what the config's ``token_sha256`` holds."""
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


def bearer_token(authorization: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header; None when malformed."""
    if authorization is None or len(authorization) > _MAX_HEADER:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token or any(c.isspace() for c in token):
        return None
    return token


class Authenticator:
    """Finds the tenant a request's bearer token belongs to."""

    def __init__(self, tenants: Iterable[Tenant]) -> None:
        self._tenants = tuple(tenants)
        self._hashes = tuple(t.token_sha256.lower().encode("ascii") for t in self._tenants)

    def tenant(self, authorization: str | None) -> Tenant | None:
        """The tenant of ``Authorization: Bearer <token>``, or None (missing, malformed
        or unknown token: all the same 401 to the caller)."""
        token = bearer_token(authorization)
        if token is None:
            return None
        presented = token_hash(token).encode("ascii")
        found: Tenant | None = None
        for tenant, expected in zip(self._tenants, self._hashes, strict=True):
            # Every hash is compared, a match or not, so timing names no tenant.
            if hmac.compare_digest(presented, expected):
                found = tenant
        return found


def metrics_allowed(authorization: str | None, sha256: str | None) -> bool:
    """Whether a request may read ``/metrics``: always when no metrics token is set."""
    if sha256 is None:
        return True
    token = bearer_token(authorization)
    if token is None:
        return False
    return hmac.compare_digest(token_hash(token).encode("ascii"), sha256.lower().encode("ascii"))
