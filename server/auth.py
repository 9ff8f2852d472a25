"""Bearer tokens to tenants, compared in constant time.

Every configured token is compared on every request (``hmac.compare_digest`` over SHA-256
digests, so lengths leak nothing either) and the loop never stops early: the time taken
does not depend on which token, if any, matched.
"""

from __future__ import annotations

import hashlib
import hmac

from server.config import Settings, TenantSettings
from server.errors import Forbidden, Unauthorized

OPERATOR = TenantSettings(name="__operator__", tokens=(), pools=(), default_pool="")


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


class Authenticator:
    """Maps a request's ``Authorization`` header to its tenant (or the operator)."""

    def __init__(self, settings: Settings) -> None:
        self._entries = [
            (_digest(tok), tenant) for tenant in settings.tenants.values() for tok in tenant.tokens
        ]
        if settings.operator_token:
            self._entries.append((_digest(settings.operator_token), OPERATOR))

    def authenticate(self, header: str | None) -> TenantSettings:
        """The tenant whose token the header carries; Unauthorized otherwise."""
        scheme, _, token = (header or "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthorized("missing bearer token (Authorization: Bearer <token>)")
        digest = _digest(token.strip())
        found = None
        for expected, tenant in self._entries:
            if hmac.compare_digest(digest, expected):
                found = tenant
        if found is None:
            raise Unauthorized("invalid bearer token")
        return found

    @staticmethod
    def require_operator(tenant: TenantSettings) -> None:
        if tenant is not OPERATOR:
            raise Forbidden("this endpoint needs the operator token")

    @staticmethod
    def require_tenant(tenant: TenantSettings) -> None:
        if tenant is OPERATOR:
            raise Forbidden("the operator token cannot run code; use a tenant token")
