"""Stored data that expands is read in bounded pieces, within a byte budget per download.

A cache key can be tiny on disk and huge once decoded: a categorical repeating a few long
strings, or string views all pointing at one value. Over HTTP, against ``dataexec serve``
in a process of its own (its memory is read from ``/proc/<pid>/status``): a CSV or JSON
download of such a key that would be over ``max_download_bytes`` answers
``OUTPUT_TOO_LARGE`` before its first byte; one within the budget streams in pieces, and
the server's peak memory grows by far less than the download (reading a whole batch of rows
grew it by the download's size, several times over); ``load()`` of a key streams the same
way, and past ``sql_max_result_bytes`` fails with ``OUTPUT_TOO_LARGE``; a text that grows
past the budget while it is sent ends in an aborted connection, which the client sees as an
incomplete body, never as a whole one. In a kernel, a preview
and its statistics cut long values (20 values of 100 MB each answer a few KB) and say so.
Every download and notebook is served with ``nosniff`` and a restrictive CSP.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from dataexec_testing.api import assert_error, ok, value_of
from dataexec_testing.serve import ServeProcess, serve_env, start_serve

from server.embedded.postgres import EmbeddedPostgres

pytestmark = pytest.mark.timeout(300)

MiB = 1024 * 1024
# The most the server process may grow while it serves a download or a load of several
# hundred MB: reading such a key a batch of rows at a time grows it by GBs.
GROWTH_BOUND = 250 * MiB

# A categorical of two 1 MiB strings over ``rows`` rows: a few KB of Parquet, rows MiB once
# written out as text.
CATEGORICAL_BOMB = """
codes = np.arange({rows}) % 2
bomb = pd.DataFrame({{'s': pd.Categorical.from_codes(codes, ['x' * 2**20, 'y' * 2**20])}})
key = save(bomb)
del bomb
key
"""
# A string view column whose rows all point at one 10 KiB value: 1.6 MB of Arrow sent to
# the cache, 10 KiB * rows once copied out.
VIEW_BOMB = """
import numpy as np
import pyarrow as pa
from dataexec_kernel import broker

def view_bomb(rows):
    value = b'v' * 10240
    views = np.zeros((rows, 4), dtype=np.int32)
    views[:, 0] = len(value)
    views[:, 1] = int.from_bytes(value[:4], 'little', signed=True)
    array = pa.Array.from_buffers(
        pa.string_view(), rows, [None, pa.py_buffer(views.tobytes()), pa.py_buffer(value)]
    )
    return broker.put(pa.table({{'v': array}}), 'save', None)

view_bomb({rows})
"""


@pytest.fixture
async def serve(tmp_path: Path, embedded_pg: EmbeddedPostgres) -> AsyncIterator[ServeProcess]:
    """``dataexec serve`` of its own (1 GiB download budget) on the shared database."""
    env = serve_env(tmp_path)
    env["DATAEXEC_DATABASE_URL"] = embedded_pg.query_url.render_as_string(hide_password=False)
    server = await start_serve(env)
    yield server
    if server.process.returncode is None:
        server.process.send_signal(signal.SIGTERM)
        await asyncio.wait_for(server.process.wait(), 30)


class Memory:
    """The peak memory of a process since ``reset``, from /proc (VmHWM, reset through
    clear_refs, which Linux allows the process's owner)."""

    def __init__(self, pid: int) -> None:
        self.status = Path(f"/proc/{pid}/status")
        self.clear_refs = Path(f"/proc/{pid}/clear_refs")
        self.base = 0

    def field(self, name: str) -> int:
        for line in self.status.read_text().splitlines():
            if line.startswith(name + ":"):
                return int(line.split()[1]) * 1024
        raise AssertionError(f"{name} not in {self.status}")

    def reset(self) -> None:
        self.clear_refs.write_text("5")  # the peak starts again from the current size
        self.base = self.field("VmRSS")

    def growth(self) -> int:
        return self.field("VmHWM") - self.base


async def streamed(client: httpx.AsyncClient, url: str) -> tuple[int, int, dict[str, str]]:
    """Status, body bytes (read and dropped as they come) and headers of a download."""
    size = 0
    async with client.stream("GET", url) as response:
        async for chunk in response.aiter_raw():
            size += len(chunk)
    return response.status_code, size, dict(response.headers)


async def test_a_bomb_key_over_the_budget_answers_output_too_large_before_any_byte(
    serve: ServeProcess,
) -> None:
    memory = Memory(serve.process.pid)
    async with serve.client(timeout=120) as client:
        key = await value_of(client, "bomb", CATEGORICAL_BOMB.format(rows=2048))  # 2 GiB
        memory.reset()
        for fmt in ("csv", "json"):
            detail = assert_error(
                await client.get(f"/cache/{key}?format={fmt}"), 400, "OUTPUT_TOO_LARGE"
            )
            assert "max_download_bytes" in detail["message"], detail
        # Parquet and Arrow keep the categorical: small, and sent whole.
        arrow = await client.get(f"/cache/{key}?format=arrow")
        assert arrow.status_code == 200 and len(arrow.content) < 8 * MiB
        assert (await client.get(f"/cache/{key}")).status_code == 200
        assert memory.growth() < GROWTH_BOUND, memory.growth()
        assert (await client.get("/health")).status_code == 200


async def test_a_bomb_key_within_the_budget_streams_in_bounded_memory(
    serve: ServeProcess,
) -> None:
    memory = Memory(serve.process.pid)
    async with serve.client(timeout=120) as client:
        categorical = await value_of(client, "bomb", CATEGORICAL_BOMB.format(rows=700))
        views = await value_of(client, "bomb", VIEW_BOMB.format(rows=70_000))  # 680 MiB
        memory.reset()
        for key, fmt in ((categorical, "csv"), (categorical, "json"), (views, "arrow")):
            status, size, _ = await streamed(client, f"/cache/{key}?format={fmt}")
            assert status == 200 and size > 600 * MiB, (fmt, status, size)
            assert memory.growth() < GROWTH_BOUND, (fmt, memory.growth())


async def test_load_of_a_key_that_expands_streams_in_bounded_memory(
    serve: ServeProcess,
) -> None:
    memory = Memory(serve.process.pid)
    async with serve.client(timeout=120) as client:
        key = await value_of(client, "load", VIEW_BOMB.format(rows=40_000))  # 400 MiB
        memory.reset()
        rows = await value_of(
            client,
            "load",
            "from dataexec_kernel import broker\n"
            f"broker.load_table({key!r}, mapped=False).num_rows",
        )
        assert rows == 40_000
        assert memory.growth() < GROWTH_BOUND, memory.growth()


async def test_past_its_budget_a_download_ends_detectably_and_a_load_fails_cleanly(
    tmp_path: Path, embedded_pg: EmbeddedPostgres
) -> None:
    env = serve_env(tmp_path)
    env["DATAEXEC_DATABASE_URL"] = embedded_pg.query_url.render_as_string(hide_password=False)
    env["DATAEXEC_MAX_DOWNLOAD_BYTES"] = str(4 * MiB)
    env["DATAEXEC_SQL_MAX_RESULT_BYTES"] = str(8 * MiB)  # also what load() may receive
    served = await start_serve(env)
    try:
        async with served.client() as client:
            # 1 MB as Arrow (within the budget before sending), 5 MB as CSV, 7 MB as JSON
            key = await value_of(
                client, "s", "save(pd.DataFrame({'n': np.full(1_000_000, -100, dtype='int8')}))"
            )
            for fmt in ("csv", "json"):
                with pytest.raises(httpx.RemoteProtocolError):
                    await streamed(client, f"/cache/{key}?format={fmt}")
            status, size, _ = await streamed(client, f"/cache/{key}?format=arrow")
            assert status == 200 and size < 4 * MiB
            # 1.6 MB sent to the cache, 10 MiB as Arrow once copied out: over 8 MiB
            views = await value_of(client, "s", VIEW_BOMB.format(rows=1024))
            refused = await client.post("/sessions/s/execute", json={"code": f"load({views!r})"})
            assert_error(refused, 400, "OUTPUT_TOO_LARGE")
            assert await value_of(client, "s", "1 + 1") == 2
            assert (await client.get("/health")).status_code == 200
    finally:
        assert await served.stop() == 0


async def test_a_preview_of_huge_values_cuts_them_and_says_so(
    client: httpx.AsyncClient, session_id: str
) -> None:
    # 19 values of 50 MB: 1 GB of JSON uncut. result_df, since pandas' own display of such a
    # frame (the cell's execute_result) builds GBs of its own.
    huge = "pd.Categorical.from_codes([0] * 19 + [1], ['x' * 5 * 10**7, 'short'])"
    code = f"result_df = pd.DataFrame({{'s': {huge}}})"
    answer = await ok(client, session_id, code, max_rows=20)
    values = [row[0] for row in answer["data"]["rows"]]
    assert len(values) == 20 and values[-1] == "short"
    assert all(len(v) <= 4001 and v.endswith("\u2026") for v in values[:19])
    [top, *_] = answer["metadata"]["result_schema"][0]["stats"]["top_values"]
    assert top["count"] == 19 and len(top["value"]) <= 4001
    assert any("cut" in w for w in answer["metadata"]["warnings"]), answer["metadata"]


async def test_a_preview_stops_at_its_byte_budget_and_says_so(
    client: httpx.AsyncClient, session_id: str
) -> None:
    # 3,000 rows of 3,000 characters: 9 MB of preview, past half the 1 MiB output limit
    answer = await ok(client, session_id, "pd.DataFrame({'s': ['y' * 3000] * 3000})", max_rows=3000)
    metadata = answer["metadata"]
    assert metadata["row_count"] == 3000 and metadata["truncated"] is True
    assert 0 < len(answer["data"]["rows"]) < 200
    assert any("preview stops" in w for w in metadata["warnings"]), metadata


async def test_csv_cells_that_read_as_formulas_are_escaped_unless_asked_not_to(
    client: httpx.AsyncClient, session_id: str
) -> None:
    frame = (
        "pd.DataFrame({'=a': ['=1+1', '+x', '-y', '@z', '\\tt', '\\rr', 'plain'], "
        "'n': [-5, 1, 2, 3, 4, 5, 6]})"
    )
    key = (await ok(client, session_id, frame))["cache_key"]
    escaped = (await client.get(f"/cache/{key}?format=csv")).text.splitlines()
    assert escaped[0] == '"\'=a","n"'
    assert escaped[1] == '"\'=1+1",-5', "text cells get a quote, numbers stay numbers"
    assert [line.split(",")[0] for line in escaped[2:5]] == ['"\'+x"', '"\'-y"', '"\'@z"']
    assert escaped[-1] == '"plain",6'
    plain = (await client.get(f"/cache/{key}?format=csv&escape_formulas=false")).text
    assert plain.splitlines()[1] == '"=1+1",-5'
    bad = await client.get(f"/cache/{key}?format=csv&escape_formulas=maybe")
    assert_error(bad, 400, "VALIDATION_ERROR")


async def test_downloads_and_notebooks_are_served_nosniff_with_a_restrictive_csp(
    client: httpx.AsyncClient, session_id: str
) -> None:
    html = "pd.DataFrame({'h': ['<script>alert(1)</script>']})"
    key = (await ok(client, session_id, html))["cache_key"]
    responses = [await client.get(f"/cache/{key}?format={fmt}") for fmt in ("csv", "json")]
    responses += [await client.get(f"/sessions/{session_id}/notebook")]
    responses += [await client.get("/cache/00000000-0000-4000-8000-000000000000")]  # an error
    for response in responses:
        assert response.headers["X-Content-Type-Options"] == "nosniff", response.url
        policy = response.headers["Content-Security-Policy"]
        assert "default-src 'none'" in policy and "sandbox" in policy, response.url
