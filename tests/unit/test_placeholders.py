"""Query parameters in the styles DB-API users write, made into ``:name`` ones for ``sql()``.

tests/test_sql_params.py runs them in a real kernel through ``pd.read_sql(..., params=)``.
"""

from __future__ import annotations

import numpy as np
import pytest
from dataexec_kernel.placeholders import named


@pytest.mark.parametrize(
    ("query", "params", "expected"),
    [
        ("SELECT :a", {"a": 1}, ("SELECT :a", {"a": 1})),
        ("SELECT %(a)s::text, 10 %% 3", {"a": 1}, ("SELECT :a ::text, 10 % 3", {"a": 1})),
        ("SELECT %s, %s", (1, "x"), ("SELECT :p1, :p2", {"p1": 1, "p2": "x"})),
        ("SELECT ? + ?", [1, 2], ("SELECT :p1 + :p2", {"p1": 1, "p2": 2})),
        ("SELECT $2, $1::int", [1, 2], ("SELECT :p2, :p1 ::int", {"p1": 1, "p2": 2})),
        ("SELECT :1", [7], ("SELECT :p1", {"p1": 7})),
        ("SELECT 1", None, ("SELECT 1", None)),
        ("SELECT 1", [], ("SELECT 1", None)),
        ("SELECT :a", {"a": np.int64(3)}, ("SELECT :a", {"a": 3})),
    ],
)
def test_each_style_becomes_named_markers(query: str, params: object, expected: object) -> None:
    assert named(query, params) == expected


def test_markers_inside_literals_identifiers_and_comments_stay_as_they_are() -> None:
    query = (
        "SELECT '50%', 'it''s ?', E'\\' ?', \"col?\", `x?`, x::int, arr[1:2], $$ ? %s $$, "
        "$q$ $1 $q$ -- ? %s\n, ? /* %s ? */"
    )
    rewritten, params = named(query, [5])
    assert params == {"p1": 5}
    assert rewritten == query.replace("\n, ?", "\n, :p1")


def test_a_count_that_does_not_match_the_markers_is_a_type_error() -> None:
    with pytest.raises(TypeError, match="1 %s markers and 2"):
        named("SELECT %s", [1, 2])
    with pytest.raises(TypeError, match="no %s, \\? or \\$1 marker"):
        named("SELECT 1", [1])
    with pytest.raises(TypeError, match="\\$3"):
        named("SELECT $3", [1])
    with pytest.raises(TypeError, match="dict"):
        named("SELECT ?", "ab")
