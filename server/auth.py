"""Bearer tokens to tenants, compared in constant time.

Configured tokens are kept as SHA-256 digests: given in plaintext, or already hashed as
``sha256:<hex>`` (``hash_token``, ``dataexec hash-token``) so that the config file holds no
usable secret. A presented token is always hashed, so presenting a hash proves nothing.
Every configured digest is compared on every request (``hmac.compare_digest``) and the loop
never stops early: the time taken does not depend on which token, if any, matched.

Tokens are random strings of at least 16 characters, not passwords: an unsalted, fast hash
is enough to keep them out of the config file (guessing one is as hard as guessing the token).
"""

from __future__ import annotations

import hashlib
import hmac

from server.config import Settings, TenantSettings, token_digest
from server.errors import Forbidden, Unauthorized

OPERATOR = TenantSettings(name="__operator__", tokens=(), pools=(), default_pool="")


def hash_token(token: str) -> str:
    """The ``sha256:<hex>`` form of ``token``, to configure instead of the token itself."""
    return "sha256:" + hashlib.sha256(token.encode()).hexdigest()


class Authenticator:
    """Maps a request's ``Authorization`` header to its tenant (or the operator)."""

    def __init__(self, settings: Settings) -> None:
        self.reload(settings)

    def reload(self, settings: Settings) -> None:
        """Take the tokens of ``settings`` (a configuration reload): one swap, so every
        request is checked against the old tokens or the new ones, never a mix."""
        entries = [
            (token_digest(tok), tenant)
            for tenant in settings.tenants.values()
            for tok in tenant.tokens
        ]
        if settings.operator_token:
            entries.append((token_digest(settings.operator_token), OPERATOR))
        self._entries = entries

    def authenticate(self, header: str | None) -> TenantSettings:
        """The tenant whose token the header carries; Unauthorized otherwise."""
        scheme, _, token = (header or "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthorized("missing bearer token (Authorization: Bearer <token>)")
        digest = hashlib.sha256(token.strip().encode()).digest()
        found = None
        for expected, tenant in self._entries:
            if hmac.compare_digest(digest, expected):
                found = tenant
        if found is None:
            raise Unauthorized("invalid bearer token")
        return found

    def is_operator(self, header: str | None) -> bool:
        """Whether the header carries the operator token (never raises)."""
        try:
            return self.authenticate(header) is OPERATOR
        except Unauthorized:
            return False

    @staticmethod
    def require_operator(tenant: TenantSettings) -> None:
        if tenant is not OPERATOR:
            raise Forbidden("this endpoint needs the operator token")

    @staticmethod
    def require_tenant(tenant: TenantSettings) -> None:
        if tenant is OPERATOR:
            raise Forbidden("the operator token cannot run code; use a tenant token")
