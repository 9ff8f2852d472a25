"""Who a kernel serves: the broker's answer to "who is asking", and what it is doing."""

from __future__ import annotations

from dataclasses import dataclass, field

from server.cache.lineage import StepLineage


@dataclass
class Caller:
    """The tenant, session and kernel a broker socket answers for.

    ``lineage`` describes the step running now and the keys it has read so far: the
    lineage of the frames it puts.
    """

    tenant: str
    session_id: str  # the client's id ("" for a throwaway kernel)
    kernel_id: str
    store_id: str | None = None  # the session's internal id in the store
    lineage: StepLineage = field(init=False)

    def __post_init__(self) -> None:
        self.lineage = StepLineage(self.session_id or None)
