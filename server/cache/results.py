"""The result part of an answer (``EnrichedExecutionResult``), from a result payload.

A payload is what the kernel protocol computes for a frame (``protocol.ResultPayload``): a
kernel's result capture for its frames, ``table_result`` here for a table the server holds
(SQL without a session). Preview, row count, types and statistics come from the protocol's
one Arrow implementation either way; ``type`` is the pandas dtype each column has once the
table is a DataFrame (what the same query gives inside a kernel). A frame's remnant
row-number index is never part of an answer (``protocol.answer_columns``).
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa
from dataexec_kernel import answers, protocol


def answer(payload: protocol.ResultPayload) -> dict[str, Any]:
    """``status``, ``metadata``, ``data`` and ``cache_key`` of an answer."""
    if payload["kind"] == "none":
        return {
            "status": "success",
            "metadata": {"row_count": 0, "truncated": False, "result_schema": []},
            "data": None,
            "cache_key": None,
        }
    metadata = {
        "row_count": payload["row_count"],
        "truncated": payload["truncated"],
        "result_schema": payload["result_schema"],
    }
    if payload.get("stats_sample_rows"):  # distinct_count and top_values of a sample
        metadata["stats_sample_rows"] = payload["stats_sample_rows"]
    if payload.get("warnings"):  # renamed columns, values kept as text, cut values or rows
        metadata["warnings"] = payload["warnings"]
    return {
        "status": "success",
        "metadata": metadata,
        "data": {"columns": payload["columns"], "rows": payload["rows"]},
        "cache_key": payload.get("cache_key"),
    }


def table_result(table: pa.Table, max_rows: int) -> dict[str, Any]:
    """The answer for a result table the server holds (its cache key is set by the caller):
    the columns an answer shows of it (a SQL result's are all of them)."""
    shown = protocol.answer_table(table)
    return answer({"kind": "dataframe", **answers.table_payload(shown, max_rows)})  # type: ignore[typeddict-item]
