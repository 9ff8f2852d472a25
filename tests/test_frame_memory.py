"""The server's memory for whole frames (``frame_memory_bytes``, server/cache/memory.py).

Frames a kernel sends to be cached and results of SQL run without a session are held whole
in the server until their Parquet file is written. One byte budget bounds them all together:
a frame over it is refused (the step still answers its data, uncached, saying why; SQL
without a session answers OUTPUT_TOO_LARGE), and frames that fit but not at once wait for
the writes before them instead of adding up.
"""

from __future__ import annotations

import asyncio
import secrets
from pathlib import Path

from dataexec_testing.api import CONFIG, assert_error, ok, server_on, wait_for

from server.embedded.postgres import EmbeddedPostgres

BUDGET = 4 * 1024 * 1024
# Top-level keys go before the config's tables.
LIMITED = f"frame_memory_bytes = {BUDGET}\n" + CONFIG
# 300,000 int64 rows: about 2.4 MB as Arrow, so two of them do not fit the budget at once.
FITS = "pd.DataFrame({'x': range(300_000)})"
TOO_BIG = "pd.DataFrame({'x': range(1_000_000)})"  # about 8 MB


async def test_frames_over_the_servers_frame_memory_are_refused_and_the_rest_take_turns(
    embedded_pg: EmbeddedPostgres, tmp_path: Path
) -> None:
    async with server_on(embedded_pg, tmp_path, LIMITED) as server:
        acme = server.client(timeout=120)
        memory = server.runtime.cache.memory
        tag = secrets.token_hex(4)

        refused = await ok(acme, f"big-{tag}", TOO_BIG)
        assert refused["cache_key"] is None
        assert "frame_memory_bytes" in refused["metadata"]["cache_error"]
        assert refused["metadata"]["row_count"] == 1_000_000  # the answer itself stands

        sessionless = await acme.post(
            "/execute", json={"language": "sql", "code": "SELECT * FROM flights"}
        )
        assert "frame_memory_bytes" in assert_error(sessionless, 400, "OUTPUT_TOO_LARGE")["message"]

        # Three kernels send a frame each at once: each waits its turn, none is refused.
        answers = await asyncio.gather(
            *(ok(acme, f"fits-{i}-{tag}", FITS) for i in range(3)),
            acme.post("/execute", json={"language": "sql", "code": "SELECT * FROM airlines"}),
        )
        *frames, small = answers
        assert all(frame["cache_key"] for frame in frames), [f["metadata"] for f in frames]
        assert small.status_code == 200, small.text
        for frame in frames:
            stored = await acme.get(f"/cache/{frame['cache_key']}/meta")
            assert stored.json()["row_count"] == 300_000

        async def given_back() -> bool:
            return memory.used == 0

        await wait_for(given_back, timeout=30)
        for name in ("big", *(f"fits-{i}" for i in range(3))):
            await acme.delete(f"/sessions/{name}-{tag}")
        await acme.aclose()
