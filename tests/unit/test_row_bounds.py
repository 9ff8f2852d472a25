"""Rows measured by bytes as they arrive: ``check_rows`` and ``RowBatches``' fetch sizes.

On PostgreSQL the database refuses a row over ``sql_max_row_bytes`` itself
(tests/test_sql_limits.py); these are the checks every other dialect relies on, and
PostgreSQL's second layer.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pyarrow as pa
import pytest

from server.errors import OutputTooLarge
from server.sql.streaming import CHUNK_ROWS, FIRST_FETCH_ROWS, RowBatches, check_rows, value_sizes


def test_value_sizes_of_strings_lists_structs_and_dictionaries() -> None:
    words = pa.array(["a", None, "ccc"])
    assert value_sizes(words).tolist() == [1, 0, 3]
    lists = pa.array([["ab", "c"], [], None])
    assert value_sizes(lists).tolist() == [3, 0, 0]
    structs = pa.array([{"s": "abcd", "n": 1}, {"s": None, "n": 2}])
    assert value_sizes(structs).tolist() == [12, 8]
    categories = pa.array(["xx", "y", "xx"]).dictionary_encode()
    assert value_sizes(categories).tolist() == [2, 1, 2]


def test_a_row_over_the_cap_is_refused_naming_its_largest_column() -> None:
    batch = pa.record_batch(
        {"id": pa.array([1, 2]), "small": ["x" * 600, "y"], "big": ["z" * 500, "w" * 2000]}
    )
    check_rows(batch, 3000)  # the largest row: 8 + 1 + 2,000
    with pytest.raises(OutputTooLarge, match="'big'") as refused:
        check_rows(batch, 1500)
    assert "sql_max_row_bytes" in refused.value.message and "2,009 bytes" in refused.value.message


class Rows:
    """A DB-API cursor's ``fetchmany`` over made-up rows, remembering what it was asked."""

    def __init__(self, rows: list[tuple[Any, ...]]) -> None:
        self.rows = rows
        self.asked: list[int] = []

    def fetchmany(self, size: int) -> Sequence[tuple[Any, ...]]:
        self.asked.append(size)
        taken, self.rows = self.rows[:size], self.rows[size:]
        return taken


def test_row_batches_fetch_few_rows_until_they_know_their_size() -> None:
    small = Rows([(i, "x") for i in range(200_000)])
    batches = RowBatches(small.fetchmany, ["i", "s"], [None, None], max_row_bytes=1 << 20)
    assert sum(b.num_rows for b in batches) == 200_000
    assert small.asked[:2] == [FIRST_FETCH_ROWS, CHUNK_ROWS]  # small rows: full chunks
    wide = Rows([(i, "x" * 1_000_000) for i in range(40)])
    batches = RowBatches(wide.fetchmany, ["i", "s"], [None, None], max_row_bytes=4 << 20)
    assert sum(b.num_rows for b in batches) == 40
    assert wide.asked[0] == FIRST_FETCH_ROWS and max(wide.asked[1:]) <= 17  # ~16 MiB a batch


def test_row_batches_stop_at_the_first_row_over_the_cap() -> None:
    rows = Rows([(1, "x" * 10), (2, "y" * 5_000_000)] + [(3, "z")] * 1_000)
    with pytest.raises(OutputTooLarge):
        list(RowBatches(rows.fetchmany, ["i", "s"], [None, None], max_row_bytes=1 << 20))
    assert rows.asked == [FIRST_FETCH_ROWS]  # nothing fetched after the huge row's chunk
