"""A cache key deleted while a session loads it: the reader gets the whole frame or NOT_FOUND.

Sixty real races: a key is made, a kernel loads it from three threads at once while
``DELETE /cache/{key}`` goes out over HTTP a moment later. Before the fix 2 of 60 answered
``EXECUTION_ERROR: internal error in the broker`` (SQLAlchemy's ``StaleDataError`` when the
row went between the read of the key and the write of its ``last_used``, or the Parquet file
gone between the two). Every reader must now get all the rows or ``CacheKeyNotFound``.
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter

import httpx
from dataexec_testing.api import ONE_SERVER, assert_error, ok, run

RACES = 60
ROWS = 20_000
LOADERS = 3


def loaders_cell(key: str) -> str:
    """Load ``key`` from a few threads at once; each one's outcome (rows, or the error)."""
    return f"""
from concurrent.futures import ThreadPoolExecutor
from dataexec_kernel import CacheKeyNotFound

def one(_):
    try:
        return str(len(load({key!r})))
    except CacheKeyNotFound:
        return "NOT_FOUND"
    except Exception as exc:
        return f"{{type(exc).__name__}}: {{exc}}"

with ThreadPoolExecutor({LOADERS}) as threads:
    outcomes = list(threads.map(one, range({LOADERS})))
"|".join(outcomes)
"""


@ONE_SERVER
async def test_a_key_deleted_during_load_gives_the_whole_frame_or_not_found(
    client: httpx.AsyncClient, session_id: str
) -> None:
    await ok(client, session_id, "1")
    outcomes: Counter[str] = Counter()
    rng = random.Random(12)
    for _ in range(RACES):
        made = await client.post(
            "/execute",
            json={
                "language": "sql",
                "code": f"SELECT * FROM flights LIMIT {ROWS}",
                "max_rows": 0,
            },
        )
        assert made.status_code == 200, made.text
        key = made.json()["cache_key"]
        await client.get(f"/cache/{key}/meta")  # written: the race is with reads, not the write
        loading = asyncio.ensure_future(run(client, session_id, loaders_cell(key)))
        await asyncio.sleep(rng.uniform(0.0, 0.02))
        deleted = await client.delete(f"/cache/{key}")
        assert deleted.status_code in (200, 204), deleted.text
        answer = await loading
        assert answer.status_code == 200, answer.text
        outcomes.update(answer.json()["data"]["rows"][0][0].split("|"))
    assert set(outcomes) <= {str(ROWS), "NOT_FOUND"}, outcomes
    # The last key is gone for good: load() answers NOT_FOUND, as an API error too.
    gone = await run(client, session_id, f"load({key!r})")
    assert assert_error(gone, 404, "NOT_FOUND")["ename"] == "CacheKeyNotFound"
