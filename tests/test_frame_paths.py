"""The paths a large frame takes between database, kernel and cache (issue 14).

- ``sql()``'s result is kept by the broker as it streams to the kernel: a step answering
  it, and the checkpoint after, name that key, and the kernel sends nothing back.
- A frame the kernel puts (a result, ``save()``, a checkpoint) travels in a memfd the kernel
  keeps for its next puts and the broker copies the stream out of; a descriptor that is not
  a file, or one shorter than the stream, is refused, and a kernel that passes none sends
  the stream after its marker byte.
- ``load(key)`` maps the key's Arrow file from the hot tier (a descriptor over the broker
  socket); with the hot tier off (``cache_hot_bytes = 0``) or past its budget it streams
  from Parquet as before, and both give the same frame.
- A kernel keeps no output history (``Out``, ``_1``...): showing a frame does not keep it
  alive for good; the last three results (``_``, ``__``, ``___``) are there as in IPython.

The metrics say which path a frame took: bytes a kernel put through the socket (``put``,
``from_kernel``) or as a memfd (``from_kernel_mapped``), bytes loaded through the socket
(``load``, ``to_kernel``) and hot files handed over to map (``load``, ``to_kernel_mapped``).
"""

from __future__ import annotations

import contextlib
import json
import secrets
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
from dataexec_testing.api import CONFIG, RunningServer, ok, server_on, value_of, wait_for
from dataexec_testing.scrapes import Samples, scrape, value

from server.embedded.postgres import EmbeddedPostgres

BYTES = "dataexec_broker_bytes_total"
QUERY = "SELECT * FROM flights WHERE month = 1"
SAME = "pd.testing.assert_frame_equal"  # values, dtypes, index and columns


@contextlib.asynccontextmanager
async def session_on(
    api: RunningServer, prefix: str
) -> AsyncIterator[tuple[httpx.AsyncClient, str]]:
    """A client of tenant A and a session id, the session ended after (the shared server's
    pool share is the tenant's)."""
    session = f"{prefix}-{secrets.token_hex(4)}"
    async with api.client() as client:
        try:
            yield client, session
        finally:
            await client.delete(f"/sessions/{session}")


def moved(before: Samples, after: Samples, op: str, direction: str) -> float:
    return value(after, BYTES, op=op, direction=direction) - value(
        before, BYTES, op=op, direction=direction
    )


async def checkpointed(client, session: str, name: str) -> dict:  # type: ignore[no-untyped-def]
    """The frame ``name`` as ``GET .../variables`` lists it once it has a checkpoint key."""

    async def ready() -> dict | None:
        frames = (await client.get(f"/sessions/{session}/variables")).json()["frames"]
        found = [f for f in frames if f["name"] == name and f["cache_key"]]
        return found[0] if found else None

    return await wait_for(ready, timeout=30)


async def test_a_sql_result_is_kept_by_the_broker_and_never_sent_back(
    api: RunningServer,
) -> None:
    async with session_on(api, "tee") as (client, session):
        before = await scrape(api)
        answer = await ok(client, session, f"f = sql({QUERY!r})\nf")
        key = answer["cache_key"]
        assert key and answer["metadata"]["row_count"] == 27004
        assert (await checkpointed(client, session, "f"))["cache_key"] == key
        after = await scrape(api)
        assert moved(before, after, "sql", "to_kernel") > 1_000_000
        assert moved(before, after, "put", "from_kernel") == 0
        assert moved(before, after, "put", "from_kernel_mapped") == 0

        meta = (await client.get(f"/cache/{key}/meta")).json()
        assert meta["lineage"]["kind"] == "sql" and meta["lineage"]["code"].startswith("f = sql(")
        assert meta["row_count"] == 27004 and meta["columns"][:3] == ["year", "month", "day"]
        # The key holds the frame sql() gave: the same values, dtypes and index.
        assert await value_of(client, session, f"{SAME}(load({key!r}), f) is None") is True

        # A changed frame is no longer that key: answering it sends it.
        changed = await ok(client, session, "f['late'] = f.dep_delay > 15\nf")
        assert changed["cache_key"] not in (None, key)
        now = await scrape(api)
        assert (
            moved(after, now, "put", "from_kernel_mapped") + moved(after, now, "put", "from_kernel")
            > 1_000_000
        )


async def load_back(
    server: RunningServer, client: httpx.AsyncClient, session: str
) -> tuple[float, float]:
    """Save a frame, load it back and check it is the same frame: the bytes the load moved
    mapped and streamed."""
    key = await value_of(client, session, f"f = sql({QUERY!r})\nsave(f)")
    before = await scrape(server)
    assert await value_of(client, session, f"{SAME}(load({key!r}), f) is None") is True
    after = await scrape(server)
    return (
        moved(before, after, "load", "to_kernel_mapped"),
        moved(before, after, "load", "to_kernel"),
    )


async def test_load_maps_the_hot_file_and_gives_the_frame_that_was_cached(
    api: RunningServer,
) -> None:
    async with session_on(api, "hot") as (client, session):
        mapped, streamed = await load_back(api, client, session)
        assert mapped > 1_000_000 and streamed == 0


async def test_without_the_hot_tier_or_past_its_budget_load_streams_parquet(
    embedded_pg: EmbeddedPostgres, tmp_path: Path
) -> None:
    for hot_bytes in (0, 64 * 1024):  # off; a budget the frame does not fit
        config = f"cache_hot_bytes = {hot_bytes}\n" + CONFIG
        (tmp_path / str(hot_bytes)).mkdir()
        async with server_on(embedded_pg, tmp_path / str(hot_bytes), config) as server:
            async with session_on(server, "cold") as (client, session):
                mapped, streamed = await load_back(server, client, session)
                assert streamed > 1_000_000 and mapped == 0
                assert not list((server.settings.state_dir / "cache" / "hot").glob("*.arrow"))


async def test_deleting_a_key_removes_its_hot_file(api: RunningServer) -> None:
    async with session_on(api, "gone") as (client, session):
        key = await value_of(client, session, "save(pd.DataFrame({'x': range(1000)}))")
        hot = api.settings.state_dir / "cache" / "hot" / f"{key}.arrow"

        async def written() -> bool:
            return hot.exists()

        assert await wait_for(written)
        assert (await client.delete(f"/cache/{key}")).status_code == 204
        assert not hot.exists()
        gone = await client.post(f"/sessions/{session}/execute", json={"code": f"load({key!r})"})
        assert gone.status_code == 404 and "deleted" in gone.json()["detail"]["message"]


async def test_a_kernel_keeps_no_output_history(api: RunningServer) -> None:
    async with session_on(api, "history") as (client, session):
        for n in range(1, 5):
            await ok(client, session, f"pd.DataFrame({{'x': range({n} * 1000)}})")
        last_three = "(len(_), len(__), len(___)) == (4000, 3000, 2000)"
        assert await value_of(client, session, last_three) is True
        assert await value_of(client, session, "len(Out)") == 0


# Speaks the broker's put by hand from inside the kernel: one descriptor of each bad kind,
# then a stream without any descriptor (the fallback), then a proper save().
HAND_PUT = """
import json, os, socket, struct
import pyarrow as pa
from dataexec_kernel import broker
table = pa.table({'x': list(range(1000))})
sink = pa.BufferOutputStream()
with pa.ipc.new_stream(sink, table.schema) as w:
    w.write_table(table)
body = sink.getvalue().to_pybytes()

def put(send):
    with broker._connect() as sock, sock.makefile('rb') as answers:
        head = json.dumps({'op': 'put', 'bytes': len(body), 'kind': 'save', 'name': None,
                           'mapped': True}).encode()
        sock.sendall(struct.pack('>I', len(head)) + head)
        broker._answer(answers)
        send(sock)
        try:
            return broker._answer(answers)['cache_key']
        except Exception as exc:
            return type(exc).__name__ + ': ' + str(exc)

def memfd(data):
    fd = os.memfd_create('x')
    os.write(fd, data)
    return fd

read_end, _ = os.pipe()
write_only = os.open(f'/proc/self/fd/{memfd(body)}', os.O_WRONLY)
outcomes = [
    put(lambda s: socket.send_fds(s, [b'\\0'], [memfd(body + b'left from a larger put')])),
    put(lambda s: socket.send_fds(s, [b'\\0'], [memfd(body[:-8])])),
    put(lambda s: socket.send_fds(s, [b'\\0'], [read_end])),
    put(lambda s: socket.send_fds(s, [b'\\0'], [write_only])),
] if DESCRIPTORS else [None, None, None, None]
outcomes.append(put(lambda s: s.sendall(b'\\0' + body)))
json.dumps(outcomes)
"""


KEPT_MEMORY = "str(broker.STREAMS._kept and (broker.STREAMS._kept.fd, broker.STREAMS._kept.size))"


async def test_put_copies_from_a_kept_memfd_and_refuses_any_other_descriptor(
    api: RunningServer,
) -> None:
    # gVisor's memfds are its own: a kernel there cannot pass one to the host, so its puts
    # take the socket (and no descriptor of its making ever reaches the broker).
    passes = all(pool.docker_runtime != "runsc" for pool in api.settings.pools.values())
    mapped, streamed_bytes = ("from_kernel_mapped", "from_kernel")[:: 1 if passes else -1]
    async with session_on(api, "put") as (client, session):
        before = await scrape(api)
        key = await value_of(client, session, "save(pd.DataFrame({'x': range(200_000)}))")
        after = await scrape(api)
        assert moved(before, after, "put", mapped) > 1_000_000
        assert moved(before, after, "put", streamed_bytes) == 0
        assert (await client.get(f"/cache/{key}/meta")).json()["row_count"] == 200_000
        # The next put writes over the same memory: the first key keeps its own frame.
        kept = await value_of(client, session, f"from dataexec_kernel import broker\n{KEPT_MEMORY}")
        other = await value_of(client, session, "save(pd.DataFrame({'y': range(150_000)}))")
        assert await value_of(client, session, KEPT_MEMORY) == kept
        assert kept != "None" or not passes
        first = f"load('{key}').equals(pd.DataFrame({{'x': range(200_000)}}))"
        assert await value_of(client, session, first) is True
        assert (await client.get(f"/cache/{other}/meta")).json()["row_count"] == 150_000

        cell = f"DESCRIPTORS = {passes}\n" + HAND_PUT
        longer, short, pipe, write_only, streamed = json.loads(
            await value_of(client, session, cell)
        )
        if passes:
            assert (await client.get(f"/cache/{longer}/meta")).json()["row_count"] == 1000
            assert "not the announced frame" in short and "not the announced frame" in pipe
            assert "the descriptor cannot be read" in write_only
        meta = (await client.get(f"/cache/{streamed}/meta")).json()
        assert meta["row_count"] == 1000 and meta["lineage"]["kind"] == "save"
        assert moved(after, await scrape(api), "put", "from_kernel") > 0
        assert await value_of(client, session, "1 + 1") == 2


async def test_an_answer_says_when_its_statistics_were_counted_on_a_sample(
    api: RunningServer,
) -> None:
    async with session_on(api, "sample") as (client, session):
        large = await ok(client, session, "pd.DataFrame({'x': range(100_000)})")
        assert large["metadata"]["stats_sample_rows"] == 65_536
        assert large["metadata"]["result_schema"][0]["stats"]["max"] == 99_999  # exact
        small = await ok(client, session, "pd.DataFrame({'x': range(1000)})")
        assert "stats_sample_rows" not in small["metadata"]
        sessionless = await client.post(
            "/execute", json={"language": "sql", "code": "SELECT * FROM flights WHERE month <= 3"}
        )
        assert sessionless.json()["metadata"]["stats_sample_rows"] == 65_536
