"""The operator's view of sessions: every tenant's, with what a tenant's own view leaves out.

``GET /sessions`` shows a tenant its own sessions; an operator sees all of them (or one
tenant's) with the tenant, the kernel's id, start and memory (the sandbox's cgroup usage,
None where the sandbox cannot tell), the pool's memory limit, and how long the session has
been idle (0 while a cell runs). Sessions only in the store (after a restart) are loaded
as a tenant's listing loads them, and show ``no_kernel``. ``terminate`` ends one by force.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from server import clock
from server.config import TenantSettings
from server.errors import NotFound
from server.sessions.manager import SessionManager
from server.sessions.session import Session

MiB = 1024 * 1024


def tenants_named(manager: SessionManager, name: str | None) -> list[TenantSettings]:
    """The configured tenants, or the one called ``name`` (NotFound if none is)."""
    tenants = manager.settings.tenants
    if name is None:
        return list(tenants.values())
    if name not in tenants:
        raise NotFound(f"no tenant {name!r}")
    return [tenants[name]]


async def sessions_of(manager: SessionManager, tenant: str | None = None) -> list[Any]:
    """Every session (of ``tenant`` only, if named) as the operator sees it, by tenant,
    oldest first."""
    found = [s for owner in tenants_named(manager, tenant) for s in await manager.list(owner)]
    found.sort(key=lambda s: (s.tenant, s.created))
    memory = await asyncio.gather(*(_memory(s) for s in found))
    now = time.time()
    return [_describe(s, used, now) for s, used in zip(found, memory, strict=True)]


async def terminate(manager: SessionManager, tenant: str, client_id: str) -> None:
    """End a session of any tenant by force: its running cell's request answers CANCELLED
    (reason ``session_terminated``) and its kernel is destroyed."""
    [owner] = tenants_named(manager, tenant)
    await manager.delete(owner, client_id, state="terminated")


async def _memory(session: Session) -> int | None:
    kernel = session.kernel
    if kernel is None:
        return None
    try:
        return await kernel.process.memory_bytes()
    except Exception:  # gone meanwhile; the view is a snapshot, not a health check
        return None


def _describe(session: Session, memory: int | None, now: float) -> dict[str, Any]:
    view = session.describe()
    kernel = session.kernel
    view["tenant"] = session.tenant
    view["kernel"].update(
        id=kernel.kernel_id if kernel is not None else None,
        started=clock.iso(kernel.created) if kernel is not None else None,
        memory_bytes=memory,
        memory_limit_bytes=session.pool.settings.memory_mb * MiB,
    )
    view["idle_s"] = 0.0 if view["state"] == "busy" else round(now - session.last_activity, 3)
    return view
