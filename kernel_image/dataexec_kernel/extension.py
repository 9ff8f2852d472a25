"""Result capture inside the kernel, installed by ``%load_ext dataexec_kernel``.

Before each cell ``result_df`` is cleared; after it, the cell's result is kept: ``result_df``
if the cell set it, else the value of its last expression. The server then asks for it with
the user expression ``__dataexec__.result(max_rows)``, which answers one JSON document in the
``application/vnd.dataexec.result+json`` mimetype (already a JSON string, so NaN, dates and
numpy scalars are settled here and never reach the kernel's own JSON encoder).
"""

from __future__ import annotations

import datetime as dt
import decimal
import json
import math
from typing import Any

RESULT_MIMETYPE = "application/vnd.dataexec.result+json"
PIP_MESSAGE = (
    "Installing packages inside a DataExec kernel is not possible (no network, "
    "read-only environment). Ask the operator to add the package to the kernel "
    "image (kernel_image/requirements.txt, then `dataexec build-image`)."
)


def _scalar(value: Any) -> Any:
    """A JSON-safe Python value for one cell or statistic."""
    import numpy as np
    import pandas as pd

    if value is None or value is pd.NaT:
        return None
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, (pd.Timestamp, dt.datetime, dt.date, dt.time)):
        return value.isoformat()
    if isinstance(value, (pd.Timedelta, dt.timedelta)):
        return str(value)
    if isinstance(value, decimal.Decimal):
        return float(value) if value.is_finite() else None
    if isinstance(value, bytes):
        return value.hex()
    try:
        if pd.isna(value):
            return None
    except (TypeError, ValueError):
        pass
    return str(value)


def _stats(column: Any) -> dict[str, Any]:
    """Per-column statistics by type, as the API documents them."""
    import pandas as pd
    from pandas.api import types

    nulls = int(column.isna().sum())
    if types.is_bool_dtype(column):
        valid = column.dropna().astype(bool)
        return {
            "true_count": int(valid.sum()),
            "false_count": int((~valid).sum()),
            "null_count": nulls,
        }
    if types.is_numeric_dtype(column):
        numbers = pd.to_numeric(column, errors="coerce")
        return {
            "min": _scalar(numbers.min()),
            "max": _scalar(numbers.max()),
            "mean": _scalar(numbers.mean()),
            "std": _scalar(numbers.std()),
            "null_count": nulls,
            "distinct_count": int(numbers.nunique()),
        }
    if types.is_datetime64_any_dtype(column):
        return {"min": _scalar(column.min()), "max": _scalar(column.max()), "null_count": nulls}
    try:
        counts = column.value_counts(dropna=True)
    except TypeError:  # unhashable values (lists, dicts)
        return {"null_count": nulls}
    top = [{"value": _scalar(v), "count": int(c)} for v, c in counts.head(5).items()]
    return {"null_count": nulls, "distinct_count": int(len(counts)), "top_values": top}


def _safe_stats(column: Any) -> dict[str, Any]:
    """Statistics, or only the null count for a column whose type has none."""
    try:
        return _stats(column)
    except Exception:
        return {"null_count": int(column.isna().sum())}


def _as_frame(value: Any) -> Any:
    """The value as a DataFrame for the answer, or None when it is not frame-like."""
    import pandas as pd

    if isinstance(value, pd.Series):
        value = value.to_frame(name=value.name if value.name is not None else "value")
    if not isinstance(value, pd.DataFrame):
        return None
    index = value.index
    if not (
        isinstance(index, pd.RangeIndex)
        and index.start == 0
        and index.step == 1
        and index.name is None
    ):
        # A meaningful index (groupby keys, a named index) is data the caller needs.
        value = value.reset_index()
    if isinstance(value.columns, pd.MultiIndex):
        value = value.set_axis(["_".join(map(str, c)).strip("_") for c in value.columns], axis=1)
    return value


def frame_payload(frame: Any, max_rows: int) -> dict[str, Any]:
    """Preview rows, full row count, schema and stats of a frame."""
    preview = frame.head(max_rows)
    rows = [[_scalar(v) for v in row] for row in preview.itertuples(index=False, name=None)]
    schema = [
        {
            "name": str(name),
            "type": str(frame[name].dtype)
            if frame.columns.is_unique
            else str(frame.iloc[:, i].dtype),
            "stats": _safe_stats(frame.iloc[:, i]),
        }
        for i, name in enumerate(frame.columns)
    ]
    return {
        "kind": "dataframe",
        "columns": [str(c) for c in frame.columns],
        "rows": rows,
        "row_count": int(len(frame)),
        "truncated": len(frame) > max_rows,
        "result_schema": schema,
    }


class ResultCapture:
    """Keeps the current cell's result and answers the server's user expressions."""

    def __init__(self, ipython: Any) -> None:
        from dataexec_kernel.frames import Frames

        self.ipython = ipython
        self.value: Any = None
        self.frames = Frames(ipython)

    def pre_run_cell(self, info: Any) -> None:
        self.ipython.user_ns.pop("result_df", None)
        self.value = None

    def post_run_cell(self, result: Any) -> None:
        if "result_df" in self.ipython.user_ns:
            self.value = self.ipython.user_ns["result_df"]
        else:
            self.value = result.result

    def result(self, max_rows: int) -> _Payload:
        """The cell's result, as the JSON the server reads."""
        import numpy as np
        import pandas as pd

        value = self.value
        frame = _as_frame(value)
        if frame is not None:
            payload = frame_payload(frame, max_rows)
            payload["cache_key"], payload["cache_error"] = self._cache(frame)
        elif value is not None and (
            np.isscalar(value)
            or isinstance(value, (pd.Timestamp, pd.Timedelta, dt.date, decimal.Decimal))
        ):
            payload = {
                "kind": "scalar",
                "columns": ["value"],
                "rows": [[_scalar(value)]],
                "row_count": 1,
                "truncated": False,
                "result_schema": [{"name": "value", "type": type(value).__name__, "stats": {}}],
            }
        else:
            payload = {"kind": "none"}
        payload["frames_changed"] = self.frames.changed()
        return _Payload(json.dumps(payload, allow_nan=False, default=str))

    def _cache(self, frame: Any) -> tuple[str | None, dict[str, str] | None]:
        """The frame's cache key, or why there is none (no broker, over a cap or the quota)."""
        from dataexec_kernel import data
        from dataexec_kernel.frames import note_cached

        try:
            key = data.put_frame(frame)
        except data.DataExecError as exc:
            return None, {"type": exc.type, "message": exc.message}
        except Exception as exc:  # columns Arrow cannot hold
            return None, {"type": "EXECUTION_ERROR", "message": f"not cached: {exc}"}
        note_cached(frame, key)
        return key, None

    def checkpoint(self, budget: int) -> _Payload:
        """The checkpoint pass the server asks for after each step (see frames.py)."""
        return _Payload(self.frames.checkpoint(budget))

    def restore(self, keys: dict[str, str]) -> _Payload:
        """Bring checkpointed frames back into a fresh kernel (see frames.py)."""
        return _Payload(self.frames.restore(keys))


class _Payload:
    """A pre-encoded JSON document, displayed under the result mimetype only."""

    def __init__(self, text: str) -> None:
        self.text = text

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> dict[str, str]:
        return {RESULT_MIMETYPE: self.text}


def _refuse_pip(line: str = "", cell: str | None = None) -> None:
    raise RuntimeError(PIP_MESSAGE)


def install(ipython: Any) -> None:
    """Register result capture, the helpers and the pip refusal in ``ipython``."""
    from dataexec_kernel import data

    capture = ResultCapture(ipython)
    ipython.events.register("pre_run_cell", capture.pre_run_cell)
    ipython.events.register("post_run_cell", capture.post_run_cell)
    ipython.push({"__dataexec__": capture}, interactive=False)
    ipython.push({"sql": data.sql, "load": data.load, "save": data.save, "conn": data.make_conn()})
    data.register_magic(ipython)
    for name in ("pip", "conda", "mamba"):
        ipython.register_magic_function(_refuse_pip, "line", name)
