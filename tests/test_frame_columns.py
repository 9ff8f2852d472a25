"""Result frames keep their columns: a remnant row-number index is no part of an answer, and
the cache keeps every index, so the frame comes back whole.

Over HTTP, in both sandboxes: a filtered or sorted frame answers its own columns only (as
``to_dict("records")`` would), while a named index, a MultiIndex, groupby keys and an
unnamed index of strings or dates become columns (the rule in
``dataexec_kernel/capture.py``). The same frames come back identical (index, columns,
dtypes; ``pd.testing.assert_frame_equal`` inside the kernel) through ``load(key)`` in a
later cell, ``save()``, ``/execute-on-data`` and checkpoints after the kernel is lost; the
CSV and JSON downloads and ``/meta`` show the answer's columns, while Parquet and Arrow give
pandas the very frame.
"""

from __future__ import annotations

import io
from typing import Any

import httpx
import pandas as pd
import pyarrow as pa
import pytest
from dataexec_testing.api import assert_error, ok, run, value_of, wait_for

pytestmark = pytest.mark.timeout(240)

# The frames of the cases, built in a kernel cell from ``BASE`` (and again in the test, to
# compare what comes back).
BASE = (
    "base = pd.DataFrame({'k': ['a', 'b', 'a', 'c'], 'n': [3, 1, 2, 5], 'v': [1.0, 2.0, 3.0, 4.0]})"
)

# A cell's last expression and the columns of its answer.
CASES: dict[str, tuple[str, list[str]]] = {
    "filtered": ("base[base.n > 1]", ["k", "n", "v"]),
    "sorted": ("base.sort_values('n')", ["k", "n", "v"]),
    "filtered series": ("base.n[base.n > 1]", ["n"]),
    "sample": ("base.sample(3, random_state=1)", ["k", "n", "v"]),
    "groupby sum": ("base.groupby('k').sum()", ["k", "n", "v"]),
    "groupby size": ("base.groupby('k').size()", ["k", "value"]),
    "value_counts": ("base.k.value_counts()", ["k", "count"]),
    "named index": ("base.set_index('k')", ["k", "n", "v"]),
    "multiindex": ("base.groupby(['k', 'n']).sum()", ["k", "n", "v"]),
    "describe": ("base.describe()", ["index", "n", "v"]),
    "resample": (
        "pd.Series([1, 2, 3], index=pd.date_range('2024-01-01', periods=3, freq='h'))"
        ".resample('2h').sum()",
        ["index", "value"],
    ),
}


async def execute(client: httpx.AsyncClient, session: str, code: str) -> dict[str, Any]:
    return await ok(client, session, f"{BASE}\n{code}")


async def test_a_filtered_or_sorted_frame_answers_its_own_columns_as_a_new_user_tries_it(
    client: httpx.AsyncClient,
) -> None:
    cells = {
        "d = pd.DataFrame({'n': [1, 2, 3]}); d[d.n > 1]": [[2], [3]],
        "d = pd.DataFrame({'n': [3, 1, 2]}); d.sort_values('n')": [[1], [2], [3]],
    }
    for cell, rows in cells.items():
        response = await client.post("/execute", json={"code": cell})
        assert response.status_code == 200, response.text
        answer = response.json()
        assert answer["data"] == {"columns": ["n"], "rows": rows}, cell
        assert [c["name"] for c in answer["metadata"]["result_schema"]] == ["n"]
        assert answer["metadata"]["row_count"] == len(rows)


async def test_each_kind_of_index_is_answered_by_the_rule_and_loads_back_the_same(
    client: httpx.AsyncClient, session_id: str
) -> None:
    keys = {}
    for name, (code, columns) in CASES.items():
        answer = await execute(client, session_id, code)
        assert answer["data"]["columns"] == columns, name
        assert [c["name"] for c in answer["metadata"]["result_schema"]] == columns, name
        assert all(len(row) == len(columns) for row in answer["data"]["rows"]), name
        keys[name] = answer["cache_key"]
        assert keys[name], name
    # A later cell: load(key) is the frame the answer was made of, index and all.
    for name, (code, _) in CASES.items():
        expected = f"({code}).to_frame() if isinstance({code}, pd.Series) else {code}"
        if name in ("groupby size", "resample"):  # an unnamed Series answers as `value`
            expected = f"({code}).to_frame('value')"
        check = (
            f"{BASE}\nloaded = load({keys[name]!r})\n"
            f"pd.testing.assert_frame_equal(loaded, {expected}, check_freq=False)\n"
            "True"
        )
        assert (await ok(client, session_id, check))["data"]["rows"] == [[True]], name


async def test_filtered_frame_keeps_its_labels_in_load_save_and_execute_on_data(
    client: httpx.AsyncClient, session_id: str
) -> None:
    answer = await ok(client, session_id, "d = pd.DataFrame({'n': [1, 2, 3]}); d[d.n > 1]")
    key = answer["cache_key"]
    labels = await ok(client, session_id, f"list(load({key!r}).index) == [1, 2]")
    assert labels["data"]["rows"] == [[True]]
    saved = await ok(
        client,
        session_id,
        f"{BASE}\nm = base.groupby(['k', 'n']).sum()\n"
        "pd.testing.assert_frame_equal(load(save(m, 'm')), m)\nTrue",
    )
    assert saved["data"]["rows"] == [[True]]
    on_data = await client.post(
        "/execute-on-data",
        json={
            "code": (
                "p = input_data['p']\n"
                "assert list(p.index) == [1, 2], p.index\n"
                "result_df = p.sort_values('n', ascending=False)"
            ),
            "cache_keys": {"p": key},
        },
    )
    assert on_data.status_code == 200, on_data.text
    assert on_data.json()["data"] == {"columns": ["n"], "rows": [[3], [2]]}
    again = await ok(
        client,
        session_id,
        f"list(load({on_data.json()['cache_key']!r}).index) == [2, 1]",
    )
    assert again["data"]["rows"] == [[True]]


async def test_downloads_and_meta_show_the_answers_columns(
    client: httpx.AsyncClient, session_id: str
) -> None:
    filtered = await execute(client, session_id, "base[base.n > 1]")
    keyed = await execute(client, session_id, "base[base.n > 1].set_index('k')")
    for answer, columns, index in (
        (filtered, ["k", "n", "v"], [0, 2, 3]),
        (keyed, ["k", "n", "v"], ["a", "a", "c"]),
    ):
        key = answer["cache_key"]
        csv = await client.get(f"/cache/{key}", params={"format": "csv"})
        assert list(pd.read_csv(io.BytesIO(csv.content)).columns) == columns
        as_json = (await client.get(f"/cache/{key}", params={"format": "json"})).json()
        assert as_json == answer["data"]
        meta = (await client.get(f"/cache/{key}/meta")).json()
        assert meta["columns"] == columns and meta["row_count"] == 3
        assert [c["name"] for c in meta["schema"]] == columns
        parquet = await client.get(f"/cache/{key}", params={"format": "parquet"})
        arrow = await client.get(f"/cache/{key}", params={"format": "arrow"})
        from_arrow = pa.ipc.open_stream(arrow.content).read_all().to_pandas()
        for frame in (pd.read_parquet(io.BytesIO(parquet.content)), from_arrow):
            assert list(frame.index) == index
            pd.testing.assert_frame_equal(frame, from_arrow)


async def test_checkpoints_bring_back_the_same_frames_after_the_kernel_is_lost(
    client: httpx.AsyncClient, session_id: str
) -> None:
    frames = {
        "filtered": "base[base.n > 1]",
        "ordered": "base.sort_values('n')",
        "keyed": "base.set_index('k')",
        "nested": "base.groupby(['k', 'n']).sum()",
        "grouped": "base.groupby('k').agg(total=('v', 'sum'))",
    }
    cell = "\n".join([BASE, *(f"{name} = {code}" for name, code in frames.items()), "filtered"])
    await ok(client, session_id, cell)
    await checkpointed(client, session_id, *frames)
    died = await run(client, session_id, "import os, signal; os.kill(os.getpid(), signal.SIGKILL)")
    assert_error(died, 500, "KERNEL_DIED")
    checks = [f"pd.testing.assert_frame_equal({name}, {code})" for name, code in frames.items()]
    answer = await ok(client, session_id, "\n".join([BASE, *checks, "True"]))
    assert sorted(answer["restored_frames"]) == sorted(["base", *frames])
    assert answer["data"]["rows"] == [[True]]


async def checkpointed(client: httpx.AsyncClient, session: str, *names: str) -> None:
    """Wait until the named frames have checkpoint keys."""

    async def ready() -> bool:
        answer = (await client.get(f"/sessions/{session}/variables")).json()
        keys = {f["name"]: f["cache_key"] for f in answer["frames"]}
        return all(keys.get(n) for n in names)

    await wait_for(ready, timeout=30)


async def test_an_index_changed_in_place_is_checkpointed_again(
    client: httpx.AsyncClient, session_id: str
) -> None:
    await ok(client, session_id, "f = pd.DataFrame({'n': [1, 2, 3]})")
    await checkpointed(client, session_id, "f")
    await ok(client, session_id, "f.index = [7, 8, 9]")
    await wait_for(lambda: _checkpoint_sees(client, session_id), timeout=30)
    died = await run(client, session_id, "import os, signal; os.kill(os.getpid(), signal.SIGKILL)")
    assert_error(died, 500, "KERNEL_DIED")
    assert await value_of(client, session_id, "str(list(f.index))") == "[7, 8, 9]"


async def _checkpoint_sees(client: httpx.AsyncClient, session: str) -> bool:
    """Whether the checkpoint of ``f`` is the one after its new index (a new key)."""
    answer = (await client.get(f"/sessions/{session}/variables")).json()
    [frame] = [f for f in answer["frames"] if f["name"] == "f"]
    key = frame["cache_key"]
    if not key:
        return False
    labels = await client.get(f"/cache/{key}", params={"format": "arrow"})
    return list(pa.ipc.open_stream(labels.content).read_all().to_pandas().index) == [7, 8, 9]
