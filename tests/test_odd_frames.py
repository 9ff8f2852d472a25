"""Odd but legal frames answer data, get a cache key and say what the answer changed.

Over HTTP, in a session: frames with duplicate, ``None``, tuple, integer or NUL-containing
column names, integers past 64 bits, ``Decimal('1e1000')``, bytes, dicts, lists and empty
dicts answer 200 (they answered ``KERNEL_DIED`` before). Columns are renamed to unique
strings, values Arrow cannot hold are kept as text (``dataexec_kernel.frames.storable``),
and ``metadata.warnings`` names both. The renamed frame is what the cache keeps: ``load()``
gives it back, every download format serves it (CSV writes dicts as JSON), and a named odd
frame is checkpointed. A 200,000-column result answers at once with its first columns, no
cache key, and says why.
"""

from __future__ import annotations

import csv
import io
import json

import httpx
import pyarrow.parquet as pq
import pytest
from dataexec_testing.api import ONE_SERVER, ok, value_of, wait_for

pytestmark = [ONE_SERVER, pytest.mark.timeout(240)]

ODD = """
import decimal
odd = pd.DataFrame({'a': [1, 2], 'b': [3, 4], 'c': [5, 6], 'd': [7, 8], 'e': [9, 10]})
odd.columns = ['a', 'a', None, ('t', 'u'), 0]
odd['n\\x00ul'] = ['x', 'y']
odd['big'] = [2**70, -2**80]
odd['dec'] = [decimal.Decimal('1e1000'), decimal.Decimal('1.5')]
odd['raw'] = [b'\\x00\\xff', b'a']
odd['dict'] = [{'k': 1}, {'k': 2, 'j': [1, 2]}]
odd['list'] = [[1, 'a'], []]
odd['empty'] = [{}, {}]
odd
"""
COLUMNS = ["a", "a_1", "column_2", "t_u", "0", "n\ufffdul"]
COLUMNS += ["big", "dec", "raw", "dict", "list", "empty"]
ROWS = [
    [1, 3, 5, 7, 9, "x", str(2**70), "1E+1000", "00ff", {"k": 1, "j": None}, '[1, "a"]', "{}"],
    [2, 4, 6, 8, 10, "y", str(-(2**80)), "1.5", "61", {"k": 2, "j": [1, 2]}, "[]", "{}"],
]

# One oddity per frame: the expression, and the answer's columns.
ONE_EACH = {
    "duplicate names": ("pd.DataFrame([[1, 2]], columns=['a', 'a'])", ["a", "a_1"]),
    "None name": ("pd.DataFrame([[1, 2]], columns=[None, 'b'])", ["column_0", "b"]),
    "tuple name": ("pd.DataFrame({('a', 'b'): [1], 'c': [2]})", ["a_b", "c"]),
    "integer names": ("pd.DataFrame([[1, 2]])", ["0", "1"]),
    "NUL in a name": ("pd.DataFrame({'a\\x00b': [1]})", ["a\ufffdb"]),
    "huge integers": ("pd.DataFrame({'x': [2**70, 1]})", ["x"]),
    "huge decimal": ("pd.DataFrame({'x': [__import__('decimal').Decimal('1e1000')]})", ["x"]),
    "bytes": ("pd.DataFrame({'x': [b'\\x00\\xff', None]})", ["x"]),
    "dicts": ("pd.DataFrame({'x': [{'a': 1}, {'b': 'z'}]})", ["x"]),
    "mixed lists": ("pd.DataFrame({'x': [[1, 'a'], [2.5]]})", ["x"]),
    "empty dicts": ("pd.DataFrame({'x': [{}, {}]})", ["x"]),
}


async def test_a_frame_of_every_oddity_answers_data_and_says_what_changed(
    client: httpx.AsyncClient, session_id: str
) -> None:
    answer = await ok(client, session_id, ODD)
    assert answer["data"] == {"columns": COLUMNS, "rows": ROWS}
    assert [c["name"] for c in answer["metadata"]["result_schema"]] == COLUMNS
    warnings = answer["metadata"]["warnings"]
    renamed = next(w for w in warnings if w.startswith("columns renamed"))
    for change in ("'a' -> 'a_1'", "None -> 'column_2'", "('t', 'u') -> 't_u'", "'n\\x00ul'"):
        assert change in renamed, renamed
    assert any(w.startswith("column names that were not strings") and "0" in w for w in warnings)
    text = next(w for w in warnings if w.startswith("columns kept as text"))
    for name in ("'big'", "'dec'", "'list'", "'empty'"):
        assert name in text, text
    assert answer["cache_key"], answer["metadata"]


@pytest.mark.parametrize("case", list(ONE_EACH))
async def test_each_oddity_alone_answers_data_with_a_cache_key(
    client: httpx.AsyncClient, session_id: str, case: str
) -> None:
    code, columns = ONE_EACH[case]
    answer = await ok(client, session_id, code)
    assert answer["data"]["columns"] == columns
    assert answer["cache_key"], answer["metadata"]
    json.dumps(answer, allow_nan=False)


async def test_the_cache_keeps_the_renamed_frame_for_load_and_every_download(
    client: httpx.AsyncClient, session_id: str
) -> None:
    key = (await ok(client, session_id, ODD))["cache_key"]
    loaded = (
        f"back = load({key!r})\nlist(back.columns) == {COLUMNS!r} and back.big[0] == {str(2**70)!r}"
    )
    assert await value_of(client, session_id, loaded) is True
    downloads = {fmt: await client.get(f"/cache/{key}?format={fmt}") for fmt in ("csv", "json")}
    downloads["parquet"] = await client.get(f"/cache/{key}")
    assert {fmt: r.status_code for fmt, r in downloads.items()} == dict.fromkeys(downloads, 200)
    assert downloads["json"].json() == {"columns": COLUMNS, "rows": ROWS}
    rows = list(csv.reader(io.StringIO(downloads["csv"].text)))
    assert rows[0] == COLUMNS
    assert json.loads(rows[1][COLUMNS.index("dict")]) == {"k": 1, "j": None}
    assert pq.read_table(io.BytesIO(downloads["parquet"].content)).column_names == COLUMNS
    arrow = await client.get(f"/cache/{key}?format=arrow")
    assert arrow.status_code == 200


async def test_a_named_odd_frame_is_checkpointed(
    client: httpx.AsyncClient, session_id: str
) -> None:
    await ok(client, session_id, ODD.replace("\nodd\n", "\nodd_copy = odd.copy()\n1\n"))

    async def checkpointed() -> dict | None:
        variables = (await client.get(f"/sessions/{session_id}/variables")).json()
        frames = {f["name"]: f for f in variables["frames"]}
        return frames if frames.get("odd_copy", {}).get("cache_key") else None

    frames = await wait_for(checkpointed, timeout=30)
    meta = (await client.get(f"/cache/{frames['odd_copy']['cache_key']}/meta")).json()
    assert meta["columns"] == COLUMNS


async def test_a_200000_column_result_answers_its_first_columns_without_a_key(
    client: httpx.AsyncClient, session_id: str
) -> None:
    answer = await ok(client, session_id, "pd.DataFrame(np.zeros((2, 200_000)))")
    columns = answer["data"]["columns"]
    assert 0 < len(columns) <= 10_000 and columns[:3] == ["0", "1", "2"]
    assert len(answer["data"]["rows"][0]) == len(columns)
    assert answer["cache_key"] is None
    assert "200000 columns" in answer["metadata"]["cache_error"]
    assert any("200000 columns" in w for w in answer["metadata"]["warnings"])
