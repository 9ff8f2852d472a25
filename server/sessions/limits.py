"""Per-tenant limits on requests, executions and sessions, answered ``429 RATE_LIMITED``.

Each tenant's ``requests_per_minute`` is a token bucket holding that many requests, refilled
evenly over a minute: a burst up to the limit passes, a steady flood is held to the rate.
``max_concurrent_executions`` counts a tenant's executions running or queued (in sessions
and without one); ``max_sessions`` its live sessions. Past a limit the request is refused at
once, with ``Retry-After`` saying when to come back; nothing is queued for the tenant that
is over its limits, so the others never wait behind it. A limit of 0 is no limit.

The kernels of a shared pool are divided fairly by the pool itself (``KernelPool``).
"""

from __future__ import annotations

import collections
import contextlib
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass

from server.config import TenantSettings
from server.errors import RateLimited


@dataclass
class _Bucket:
    tokens: float
    at: float


class TenantLimits:
    """The counters behind every tenant's limits; see the module docstring."""

    def __init__(self) -> None:
        self._buckets: dict[str, _Bucket] = {}
        self._executions: collections.Counter[str] = collections.Counter()

    def admit_request(self, tenant: TenantSettings) -> None:
        """Count one request against the tenant's rate; RateLimited when it has none left."""
        rate = tenant.requests_per_minute
        if not rate:
            return
        now = time.monotonic()
        bucket = self._buckets.setdefault(tenant.name, _Bucket(float(rate), now))
        bucket.tokens = min(float(rate), bucket.tokens + (now - bucket.at) * rate / 60.0)
        bucket.at = now
        if bucket.tokens < 1.0:
            wait_s = (1.0 - bucket.tokens) * 60.0 / rate
            raise _limited(
                f"more than {rate} requests per minute from this tenant", wait_s, limit=rate
            )
        bucket.tokens -= 1.0

    @contextlib.contextmanager
    def execution(self, tenant: TenantSettings) -> Iterator[None]:
        """Hold one of the tenant's concurrent executions while the block runs."""
        limit = tenant.max_concurrent_executions
        if limit and self._executions[tenant.name] >= limit:
            raise _limited(
                f"this tenant already has {limit} executions running or queued", 1.0, limit=limit
            )
        self._executions[tenant.name] += 1
        try:
            yield
        finally:
            self._executions[tenant.name] -= 1
            if not self._executions[tenant.name]:
                del self._executions[tenant.name]

    @staticmethod
    def admit_session(tenant: TenantSettings, live: int) -> None:
        """Refuse a new session when the tenant already has ``max_sessions`` live."""
        limit = tenant.max_sessions
        if limit and live >= limit:
            raise _limited(
                f"this tenant already has {limit} live sessions; end one (DELETE "
                "/sessions/{id}) or wait for one to expire",
                60.0,
                limit=limit,
            )


def _limited(message: str, retry_after_s: float, **extra: int) -> RateLimited:
    error = RateLimited(message, **extra)
    error.retry_after = max(1, math.ceil(retry_after_s))
    return error
