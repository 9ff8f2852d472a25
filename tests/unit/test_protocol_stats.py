"""Result statistics and preview: the one Arrow implementation in ``dataexec_kernel.protocol``.

Owns ``table_payload``, ``column_stats``, ``json_value``, ``pandas_dtype``, ``arrow_table``
and ``answer_columns`` (the same code answers for SQL run by the server and for frames in a
kernel), and ``dataexec_kernel.capture.as_frame``, which decides what of a cell's value
becomes that frame, with the rule of which index an answer shows (real pandas results:
filtered, sorted, grouped, pivoted, described, resampled). For frames of every kind of
column it asserts the documented keys per type (numbers: min, max, mean, std, null_count,
distinct_count; strings and categories: null_count, distinct_count, top_values; dates and
times: min, max, null_count; booleans: true_count, false_count, null_count), that every
preview value and statistic is strict JSON, the row count and truncation, and that the
dtype named from Arrow alone is the one pandas gives the column (what the server's SQL path
reports without building a DataFrame).
"""

from __future__ import annotations

import datetime as dt
import decimal
import json
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from dataexec_kernel import answers, protocol
from dataexec_kernel.capture import as_frame, frame_answer

NUMBER_KEYS = {"min", "max", "mean", "std", "null_count", "distinct_count"}
TEXT_KEYS = {"null_count", "distinct_count", "top_values"}
TIME_KEYS = {"min", "max", "null_count"}
BOOL_KEYS = {"true_count", "false_count", "null_count"}


def payload_of(frame: pd.DataFrame, max_rows: int = 100) -> protocol.TablePayload:
    """What a kernel answers for ``frame`` (its own dtypes), checked to be strict JSON."""
    table = protocol.arrow_table(frame)
    payload = answers.table_payload(table, max_rows, [str(t) for t in frame.dtypes])
    json.dumps(payload, allow_nan=False)
    return payload


def stats_of(frame: pd.DataFrame) -> dict[str, Any]:
    return payload_of(frame)["result_schema"][0]["stats"]


# --- the keys of each kind of column -------------------------------------------------------


@pytest.mark.parametrize(
    "column",
    [
        pd.Series([3, 1, 2, 2], dtype="int64"),
        pd.Series([3, None, 1, 2], dtype="Int64"),
        pd.Series([3.0, np.nan, 1.0, 2.0]),
        pd.Series([3, 1, 2], dtype="int8"),
        pd.Series([decimal.Decimal("3.00"), None, decimal.Decimal("1.50")], dtype=object),
    ],
    ids=["int64", "nullable_int", "float_nan", "int8", "decimal"],
)
def test_a_number_column_gets_min_max_mean_std_and_counts(column: pd.Series) -> None:
    stats = stats_of(pd.DataFrame({"n": column}))
    assert set(stats) == NUMBER_KEYS
    values = [float(v) for v in column if not pd.isna(v)]
    assert stats["min"] == min(values) and stats["max"] == max(values)
    assert stats["mean"] == pytest.approx(np.mean(values))
    assert stats["std"] == pytest.approx(np.std(values, ddof=1))
    assert stats["null_count"] == len(column) - len(values)
    assert stats["distinct_count"] == len(set(values))


def test_nan_counts_as_missing_and_stats_cover_the_other_floats() -> None:
    stats = stats_of(pd.DataFrame({"f": [1.5, np.nan, 2.5, np.nan]}))
    assert (stats["min"], stats["max"], stats["mean"]) == (1.5, 2.5, 2.0)
    assert stats["null_count"] == 2 and stats["distinct_count"] == 2


def test_infinite_floats_give_json_safe_stats_and_previews() -> None:
    payload = payload_of(pd.DataFrame({"f": [1.0, np.inf, -np.inf, np.nan]}))
    stats = payload["result_schema"][0]["stats"]
    assert set(stats) == NUMBER_KEYS
    assert payload["rows"] == [[1.0], [None], [None], [None]]
    assert stats["null_count"] == 1


@pytest.mark.parametrize(
    "column",
    [
        pd.Series(["b", "a", "b", None, "c", "b"]),
        pd.Series(["b", "a", "b", None, "c", "b"], dtype=object),
        pd.Series(pd.Categorical(["b", "a", "b", None, "c", "b"])),
    ],
    ids=["str", "object", "category"],
)
def test_a_text_or_category_column_gets_distinct_count_and_top_values(column: pd.Series) -> None:
    stats = stats_of(pd.DataFrame({"s": column}))
    assert set(stats) == TEXT_KEYS
    assert stats["null_count"] == 1 and stats["distinct_count"] == 3
    assert stats["top_values"][0] == {"value": "b", "count": 3}
    assert sorted(v["value"] for v in stats["top_values"]) == ["a", "b", "c"]


def test_top_values_are_the_five_most_frequent_most_frequent_first() -> None:
    words = [w for n, w in enumerate("abcdef", start=1) for _ in range(n)]
    stats = stats_of(pd.DataFrame({"w": words}))
    assert stats["distinct_count"] == 6
    assert stats["top_values"] == [
        {"value": w, "count": c} for w, c in zip("fedcb", [6, 5, 4, 3, 2], strict=True)
    ]


@pytest.mark.parametrize(
    ("column", "low", "high"),
    [
        (
            pd.Series([dt.date(2024, 3, 1), None, dt.date(2023, 12, 31)], dtype=object),
            "2023-12-31",
            "2024-03-01",
        ),
        (
            pd.Series(pd.to_datetime(["2024-03-01 10:00", None, "2023-12-31 23:59"])),
            "2023-12-31T23:59:00",
            "2024-03-01T10:00:00",
        ),
        (
            pd.Series(
                pd.to_datetime(["2024-03-01 10:00", None, "2023-12-31 23:00"]).tz_localize("UTC")
            ),
            "2023-12-31T23:00:00+00:00",
            "2024-03-01T10:00:00+00:00",
        ),
        (pd.Series([dt.time(9, 30), None, dt.time(7, 5)], dtype=object), "07:05:00", "09:30:00"),
    ],
    ids=["python_dates", "timestamps", "aware_timestamps", "times"],
)
def test_a_date_or_time_column_gets_min_max_and_null_count(
    column: pd.Series, low: str, high: str
) -> None:
    stats = stats_of(pd.DataFrame({"t": column}))
    assert stats == {"min": low, "max": high, "null_count": 1}


def test_a_date_column_gets_min_and_max_not_top_values() -> None:
    frame = pd.DataFrame({"day": [dt.date(2024, 1, 2), dt.date(2024, 1, 1), dt.date(2024, 1, 2)]})
    payload = payload_of(frame)
    (column,) = payload["result_schema"]
    assert column["type"] == "object"
    assert column["stats"] == {"min": "2024-01-01", "max": "2024-01-02", "null_count": 0}
    assert payload["rows"] == [["2024-01-02"], ["2024-01-01"], ["2024-01-02"]]


def test_a_timedelta_column_gets_min_and_max_like_other_times() -> None:
    column = pd.to_timedelta(["1 day", None, "2 hours"])
    stats = stats_of(pd.DataFrame({"d": column}))
    assert set(stats) == TIME_KEYS
    assert stats["null_count"] == 1
    assert (stats["min"], stats["max"]) == (str(dt.timedelta(hours=2)), str(dt.timedelta(days=1)))


@pytest.mark.parametrize(
    ("column", "counts"),
    [
        (pd.Series([True, False, True]), (2, 1, 0)),
        (pd.Series([True, None, False, True], dtype=object), (2, 1, 1)),
        (pd.Series([True, None, None], dtype="boolean"), (1, 0, 2)),
        (pd.Series([None, None], dtype="boolean"), (0, 0, 2)),
    ],
    ids=["bool", "object_with_none", "nullable", "all_missing"],
)
def test_a_boolean_column_gets_true_false_and_null_counts(
    column: pd.Series, counts: tuple[int, int, int]
) -> None:
    stats = stats_of(pd.DataFrame({"b": column}))
    assert (stats["true_count"], stats["false_count"], stats["null_count"]) == counts
    assert set(stats) == BOOL_KEYS


@pytest.mark.parametrize(
    ("column", "preview"),
    [
        (pd.Series([b"\x00\xff", None], dtype=object), ["00ff", None]),
        (pd.Series([[1, 2], None], dtype=object), [[1, 2], None]),
        (pd.Series([{"k": 1.5}, None], dtype=object), [{"k": 1.5}, None]),
    ],
    ids=["bytes", "lists", "dicts"],
)
def test_other_columns_get_their_null_count_and_a_json_preview(
    column: pd.Series, preview: list[Any]
) -> None:
    payload = payload_of(pd.DataFrame({"x": column}))
    assert payload["result_schema"][0]["stats"] == {"null_count": 1}
    assert [row[0] for row in payload["rows"]] == preview


def test_a_column_of_mixed_python_types_is_kept_as_text() -> None:
    payload = payload_of(pd.DataFrame({"m": [1, "x", 2.5]}))
    assert [row[0] for row in payload["rows"]] == ["1", "x", "2.5"]
    assert set(payload["result_schema"][0]["stats"]) == TEXT_KEYS


# --- the preview as a whole ----------------------------------------------------------------


def a_frame_of_everything() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "i": pd.Series([1, None, 3], dtype="Int64"),
            "f": [np.nan, np.inf, -0.5],
            "s": ["é", None, "✓"],
            "c": pd.Categorical(["x", None, "y"]),
            "d": [dt.date(2024, 2, 29), None, dt.date(1970, 1, 1)],
            "ts": pd.to_datetime(["2024-01-01", None, "2024-01-03"]),
            "tz": pd.to_datetime(["2024-01-01", None, "2024-01-03"]).tz_localize("Asia/Tokyo"),
            "td": pd.to_timedelta(["1s", None, "3 days"]),
            "b": pd.Series([True, None, False], dtype="boolean"),
            "dec": [decimal.Decimal("1.25"), None, decimal.Decimal("NaN")],
            "bin": [b"ab", None, b""],
            "l": [[1], None, []],
            "m": [{"a": 1}, None, {"a": None}],
        }
    )


def test_every_preview_value_and_statistic_is_strict_json() -> None:
    payload = payload_of(a_frame_of_everything())
    text = json.dumps(payload, allow_nan=False)
    assert json.loads(text) == payload
    assert payload["columns"] == list(a_frame_of_everything().columns)
    assert all(len(row) == len(payload["columns"]) for row in payload["rows"])
    assert payload["rows"][1] == [None] * len(payload["columns"]), "every missing value is null"


def test_the_preview_keeps_max_rows_and_says_it_is_truncated() -> None:
    frame = pd.DataFrame({"n": range(10)})
    cut = payload_of(frame, max_rows=3)
    assert cut["rows"] == [[0], [1], [2]]
    assert (cut["row_count"], cut["truncated"]) == (10, True)
    assert cut["result_schema"][0]["stats"]["max"] == 9, "stats cover every row, not the preview"
    whole = payload_of(frame, max_rows=10)
    assert (len(whole["rows"]), whole["row_count"], whole["truncated"]) == (10, 10, False)
    none = payload_of(frame, max_rows=0)
    assert (none["rows"], none["row_count"], none["truncated"]) == ([], 10, True)


def test_a_frame_without_columns_answers_an_empty_preview() -> None:
    payload = payload_of(pd.DataFrame())
    assert payload == {
        "columns": [],
        "rows": [],
        "row_count": 0,
        "truncated": False,
        "result_schema": [],
    }


def test_a_frame_with_no_rows_keeps_its_columns_types_and_json_safe_stats() -> None:
    frame = pd.DataFrame({"n": pd.Series([], dtype="int64"), "s": pd.Series([], dtype="str")})
    payload = payload_of(frame, max_rows=5)
    assert (payload["rows"], payload["row_count"], payload["truncated"]) == ([], 0, False)
    n, s = payload["result_schema"]
    assert (n["type"], s["type"]) == ("int64", "str")
    assert n["stats"]["null_count"] == 0 and n["stats"]["min"] is None
    assert s["stats"]["top_values"] == [] and s["stats"]["distinct_count"] == 0


def test_a_kernel_frame_reports_its_own_pandas_dtypes() -> None:
    frame = a_frame_of_everything()
    payload = payload_of(frame)
    assert [c["type"] for c in payload["result_schema"]] == [str(t) for t in frame.dtypes]


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (np.int64(7), 7),
        (np.float32(0.5), 0.5),
        (np.float64("nan"), None),
        (float("-inf"), None),
        (np.bool_(True), True),
        (pd.NaT, None),
        (pd.Timestamp("2024-01-02 03:04:05", tz="UTC"), "2024-01-02T03:04:05+00:00"),
        (dt.datetime(2024, 1, 2, 3, 4, 5), "2024-01-02T03:04:05"),
        (decimal.Decimal("Infinity"), None),
        (decimal.Decimal("2.50"), 2.5),
        (b"\x01", "01"),
        ({1: [np.nan, dt.date(2024, 1, 1)]}, {"1": [None, "2024-01-01"]}),
        (None, None),
    ],
    ids=repr,
)
def test_json_value_makes_one_cell_json_safe(value: Any, expected: Any) -> None:
    assert answers.json_value(value) == expected
    json.dumps(answers.json_value(value), allow_nan=False)


# --- the dtype from Arrow alone (the server's SQL path) ------------------------------------

# Columns as a database driver hands them over (no pandas metadata), with and without nulls.
SQL_LIKE = {
    "smallint": pa.array([1, 2], pa.int16()),
    "integer_null": pa.array([1, None], pa.int32()),
    "bigint": pa.array([1, 2], pa.int64()),
    "bigint_null": pa.array([1, None], pa.int64()),
    "real": pa.array([1.5, None], pa.float32()),
    "double": pa.array([1.5, None], pa.float64()),
    "numeric": pa.array([decimal.Decimal("1.50"), None], pa.decimal128(10, 2)),
    "text": pa.array(["a", None], pa.string()),
    "large_text": pa.array(["a", "b"], pa.large_string()),
    "boolean": pa.array([True, False]),
    "boolean_null": pa.array([True, None]),
    "date": pa.array([dt.date(2024, 1, 1), None], pa.date32()),
    "time": pa.array([dt.time(1, 2), None], pa.time64("us")),
    "timestamp": pa.array([dt.datetime(2024, 1, 1), None], pa.timestamp("us")),
    "timestamptz": pa.array([dt.datetime(2024, 1, 1), None], pa.timestamp("us", tz="UTC")),
    "interval": pa.array([dt.timedelta(days=1), None], pa.duration("us")),
    "bytea": pa.array([b"x", None], pa.binary()),
    "null": pa.array([None, None], pa.null()),
}


@pytest.mark.parametrize("name", SQL_LIKE)
def test_the_dtype_named_from_arrow_is_the_one_pandas_gives_the_column(name: str) -> None:
    table = pa.table({name: SQL_LIKE[name]})
    column = table.column(0)
    assert answers.pandas_dtype(table.schema.field(0), column.null_count) == str(
        table.to_pandas()[name].dtype
    )
    payload = answers.table_payload(table, 10)
    assert payload["result_schema"][0]["type"] == str(table.to_pandas()[name].dtype)
    json.dumps(payload, allow_nan=False)


def test_arrow_table_of_a_frame_keeps_its_index_for_to_pandas() -> None:
    frame = pd.DataFrame({"a": [1, 2], "b": ["x", "y"]}, index=[10, 20])
    table = protocol.arrow_table(frame)
    assert table.num_rows == 2 and table.schema.pandas_metadata is not None
    pd.testing.assert_frame_equal(table.to_pandas(), frame)


# --- what of a cell's value becomes the frame (capture.as_frame) ---------------------------


def test_a_named_series_becomes_a_frame_of_that_column() -> None:
    frame = as_frame(pd.Series([1, 2], name="n"))
    assert list(frame.columns) == ["n"] and frame["n"].tolist() == [1, 2]


def test_an_unnamed_series_becomes_a_column_called_value() -> None:
    assert list(as_frame(pd.Series([1.5]))) == ["value"]


def test_a_groupby_result_keeps_its_keys_as_a_column() -> None:
    data = pd.DataFrame({"k": ["a", "b", "a"], "v": [1, 2, 3]})
    payload = answer_of(data.groupby("k")["v"].sum())
    assert payload["columns"] == ["k", "v"]
    assert payload["rows"] == [["a", 4], ["b", 2]]
    assert answer_of(data["k"].value_counts())["columns"] == ["k", "count"]


def test_multiindex_columns_are_joined_into_flat_names() -> None:
    data = pd.DataFrame({"k": ["a", "b", "a"], "v": [1, 2, 3]})
    payload = answer_of(data.groupby("k").agg({"v": ["sum", "mean"]}))
    assert payload["columns"] == ["k", "v_sum", "v_mean"] and payload["row_count"] == 2


# --- which index an answer shows (protocol.answer_columns, the rule in capture.py) ----------


def answer_of(value: Any, max_rows: int = 100) -> protocol.TablePayload:
    """What a kernel answers for a cell's ``value`` (strict JSON), and that the table the
    cache gets gives the same frame back."""
    frame = as_frame(value)
    table = protocol.arrow_table(frame)
    pd.testing.assert_frame_equal(table.to_pandas(), frame, check_freq=False)
    payload = frame_answer(frame, table, max_rows)
    json.dumps(payload, allow_nan=False)
    return payload


DATA = pd.DataFrame({"k": ["a", "b", "a", "c"], "n": [3, 1, 2, 5], "v": [1.0, 2.0, 3.0, 4.0]})
HOURLY = pd.Series([1, 2, 3], index=pd.date_range("2024-01-01", periods=3, freq="h"))

# A cell's value and the columns its answer shows.
INDEX_CASES: dict[str, tuple[Any, list[str]]] = {
    "filtered": (DATA[DATA.n > 1], ["k", "n", "v"]),
    "sorted": (DATA.sort_values("n"), ["k", "n", "v"]),
    "sorted, duplicated labels": (pd.concat([DATA, DATA]).sort_values("n"), ["k", "n", "v"]),
    "head": (DATA.head(2), ["k", "n", "v"]),
    "tail": (DATA.tail(2), ["k", "n", "v"]),
    "sample": (DATA.sample(3, random_state=1), ["k", "n", "v"]),
    "filtered series": (DATA.n[DATA.n > 1], ["n"]),
    "unsigned labels": (DATA.set_axis(pd.Index([9, 8, 7, 6], dtype="uint8")), ["k", "n", "v"]),
    "groupby size": (DATA.groupby("k").size(), ["k", "value"]),
    "groupby sum": (DATA.groupby("k").sum(), ["k", "n", "v"]),
    "groupby, as_index=False": (DATA.groupby("k", as_index=False).sum(), ["k", "n", "v"]),
    "groupby on two keys": (DATA.groupby(["k", "n"]).sum(), ["k", "n", "v"]),
    "value_counts": (DATA.k.value_counts(), ["k", "count"]),
    "set_index": (DATA.set_index("k"), ["k", "n", "v"]),
    "set_index on an integer": (DATA.set_index("n"), ["n", "k", "v"]),
    "named range": (DATA.rename_axis("row"), ["row", "k", "n", "v"]),
    "pivot_table": (DATA.pivot_table(index="k", values="v", aggfunc="sum"), ["k", "v"]),
    "pivot_table with columns": (
        DATA.pivot_table(index="k", columns="n", values="v", aggfunc="sum"),
        ["k", "1", "2", "3", "5"],
    ),
    "describe": (DATA.describe(), ["index", "n", "v"]),
    "transposed": (DATA[["n", "v"]].T, ["index", "0", "1", "2", "3"]),
    "resample": (HOURLY.resample("2h").sum(), ["index", "value"]),
    "float labels": (DATA.set_axis([0.5, 1.5, 2.5, 3.5]), ["index", "k", "n", "v"]),
    "unnamed multiindex": (
        DATA.set_axis(pd.MultiIndex.from_arrays([[1, 2, 3, 4], list("wxyz")])),
        ["level_0", "level_1", "k", "n", "v"],
    ),
    "index named as a column": (DATA.set_index("k", drop=False), ["index", "k", "n", "v"]),
}


@pytest.mark.parametrize("value, columns", INDEX_CASES.values(), ids=INDEX_CASES.keys())
def test_an_answer_shows_every_index_but_a_remnant_of_row_numbers(
    value: Any, columns: list[str]
) -> None:
    payload = answer_of(value)
    assert payload["columns"] == columns
    assert [c["name"] for c in payload["result_schema"]] == columns
    assert payload["row_count"] == len(value)
    assert all(len(row) == len(columns) for row in payload["rows"])


def test_a_nullable_integer_index_is_a_remnant_too() -> None:
    frame = DATA.set_axis(pd.Index([4, 3, 2, 1], dtype="Int64"))
    table = protocol.arrow_table(frame)
    assert frame_answer(frame, table, 10)["columns"] == ["k", "n", "v"]
    # pyarrow gives the labels back as int64: the values are kept, not the nullable dtype.
    assert table.to_pandas().index.tolist() == [4, 3, 2, 1]


def test_a_filtered_frame_answers_its_rows_as_to_dict_records_would() -> None:
    d = pd.DataFrame({"n": [1, 2, 3]})
    payload = answer_of(d[d.n > 1])
    assert payload["columns"] == ["n"] and payload["rows"] == [[2], [3]]
    assert payload["rows"] == [list(r.values()) for r in d[d.n > 1].to_dict("records")]
    assert payload["result_schema"][0]["stats"]["min"] == 2


def test_the_index_columns_come_first_with_their_own_dtypes_and_stats() -> None:
    payload = answer_of(DATA.set_index(["k", "n"]))
    assert [(c["name"], c["type"]) for c in payload["result_schema"]] == [
        ("k", str(DATA.k.dtype)),
        ("n", "int64"),
        ("v", "float64"),
    ]
    assert payload["result_schema"][1]["stats"]["max"] == 5
    assert payload["rows"][0] == ["a", 3, 1.0]


def test_a_frame_arrow_cannot_hold_shows_the_same_columns() -> None:
    frame = pd.DataFrame([[1, 2], [3, 4]], columns=["a", "a"], index=pd.Index(["x", "y"], name="i"))
    with pytest.raises(ValueError):
        protocol.arrow_table(frame)
    payload = frame_answer(frame, None, 10)
    assert payload["columns"] == ["i", "a", "a"] and payload["rows"][0] == ["x", 1, 2]
    filtered = frame_answer(frame.reset_index(drop=True).iloc[[1]], None, 10)
    assert filtered["columns"] == ["a", "a"]


def test_a_table_without_pandas_metadata_is_answered_whole() -> None:
    table = pa.table({"__index_level_0__": [1, 2], "a": [3, 4]})
    assert protocol.answer_columns(table.schema) == [(0, "__index_level_0__"), (1, "a")]
    assert protocol.answer_table(table) is table


@pytest.mark.parametrize(
    "metadata",
    [b"not json", b"[1]", b'{"index_columns": "a", "columns": 3}', b'{"columns": [1, null]}'],
    ids=["text", "a list", "wrong types", "odd columns"],
)
def test_odd_pandas_metadata_of_an_uploaded_table_shows_every_column(metadata: bytes) -> None:
    table = pa.table({"a": [1], "b": [2]}).replace_schema_metadata({b"pandas": metadata})
    assert protocol.answer_table(table).column_names == ["a", "b"]


def test_an_empty_filtered_frame_answers_its_columns_only() -> None:
    payload = answer_of(DATA[DATA.n > 10])
    assert payload["columns"] == ["k", "n", "v"] and payload["row_count"] == 0


def test_the_answers_columns_of_a_cached_table_drop_only_the_remnant() -> None:
    table = protocol.arrow_table(DATA[DATA.n > 1])
    assert table.column_names == ["k", "n", "v", "__index_level_0__"]
    assert protocol.answer_table(table).column_names == ["k", "n", "v"]
    keyed = protocol.arrow_table(DATA.set_index("k"))
    assert protocol.answer_columns(keyed.schema) == [(2, "k"), (0, "n"), (1, "v")]


def test_a_plain_frame_is_answered_as_it_is() -> None:
    data = pd.DataFrame({"a": [1, 2]})
    assert as_frame(data) is data


@pytest.mark.parametrize("value", [None, 3, "text", [1, 2], {"a": 1}, np.arange(3)], ids=repr)
def test_values_that_are_not_frame_like_give_no_frame(value: Any) -> None:
    assert as_frame(value) is None


def test_a_large_result_counts_distinct_and_top_values_on_an_even_sample() -> None:
    rows = answers.STATS_SAMPLE_ROWS * 4
    # Every row distinct, and "rare" only in rows the even sample (every 4th row) skips.
    table = pa.table(
        {
            "n": np.arange(rows, dtype=np.int64),
            "s": ["rare" if i % 4 == 1 else f"v{i % 8}" for i in range(rows)],
        }
    )
    payload = answers.table_payload(table, 5)
    assert payload["stats_sample_rows"] == answers.STATS_SAMPLE_ROWS
    numbers, texts = (column["stats"] for column in payload["result_schema"])
    # Exact over every row: min, max, mean, nulls.
    assert (numbers["min"], numbers["max"]) == (0, rows - 1)
    assert numbers["mean"] == pytest.approx((rows - 1) / 2)
    # Counted on the sample: one row in four.
    assert numbers["distinct_count"] == answers.STATS_SAMPLE_ROWS
    assert "rare" not in [top["value"] for top in texts["top_values"]]
    assert texts["distinct_count"] == 2  # v0 and v4: what every 4th row holds
    assert payload["row_count"] == rows


def test_a_result_within_the_sample_size_is_counted_whole() -> None:
    table = pa.table({"n": np.arange(answers.STATS_SAMPLE_ROWS, dtype=np.int64) % 1000})
    payload = answers.table_payload(table, 5)
    assert "stats_sample_rows" not in payload
    assert payload["result_schema"][0]["stats"]["distinct_count"] == 1000
