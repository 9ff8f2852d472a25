"""Result capture inside a DataExec kernel, installed by ``%load_ext dataexec_kernel``.

Before each cell ``result_df`` is cleared; after it, the cell's result is kept: ``result_df``
if the cell set it, else the value of its last expression. The server then asks for it with
the user expression ``protocol.result_expression(max_rows)``, which answers one JSON
document (a ``protocol.ResultPayload``) under ``protocol.RESULT_MIMETYPE``, already a JSON
string, so NaN, dates and numpy scalars are settled here and never reach the kernel's own
JSON encoder. A frame's preview and statistics come from ``protocol.table_payload`` on the
same Arrow table that is sent to the cache: one implementation for the server's SQL and
the kernel's frames.
"""

from __future__ import annotations

import datetime as dt
import decimal
from typing import Any

from dataexec_kernel import broker, helpers, protocol
from dataexec_kernel.errors import DataExecError

PIP_MESSAGE = (
    "Installing packages inside a DataExec kernel is not possible (no network, "
    "read-only environment). Ask the operator to add the package to the kernel "
    "image (kernel_image/requirements.txt, then `dataexec build-image`)."
)


def as_frame(value: Any) -> Any:
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


def _loose_table(frame: Any) -> Any:
    """A table of any frame, for its preview only: column by column, text where Arrow
    cannot hold a column (duplicate or odd names are kept as text)."""
    import pyarrow as pa

    arrays = []
    for i in range(frame.shape[1]):
        column = frame.iloc[:, i]
        try:
            arrays.append(pa.array(column, from_pandas=True))
        except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError):
            arrays.append(pa.array(column.astype(str), from_pandas=True))
    return pa.Table.from_arrays(arrays, names=[str(c) for c in frame.columns])


def _scalar_payload(value: Any) -> protocol.ResultPayload:
    return {
        "kind": "scalar",
        "columns": ["value"],
        "rows": [[protocol.json_value(value)]],
        "row_count": 1,
        "truncated": False,
        "result_schema": [{"name": "value", "type": type(value).__name__, "stats": {}}],
    }


def _is_scalar(value: Any) -> bool:
    import numpy as np
    import pandas as pd

    return value is not None and (
        np.isscalar(value)
        or isinstance(value, (pd.Timestamp, pd.Timedelta, dt.date, decimal.Decimal))
    )


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
        value = self.value
        frame = as_frame(value)
        payload: protocol.ResultPayload
        if frame is not None:
            payload = self._frame_payload(frame, max_rows)
        elif _is_scalar(value):
            payload = _scalar_payload(value)
        else:
            payload = {"kind": "none"}
        payload["frames_changed"] = self.frames.changed()
        return _Payload(protocol.encode_payload(payload))

    def _frame_payload(self, frame: Any, max_rows: int) -> protocol.ResultPayload:
        """Preview and statistics of the table the cache gets, and the frame's cache key
        (or why there is none: no broker, over a cap, the quota, columns Arrow cannot hold)."""
        from dataexec_kernel.frames import note_cached

        dtypes = [str(t) for t in frame.dtypes]
        key, cache_error, table = None, None, None
        try:
            table = protocol.arrow_table(frame)
        except Exception as exc:
            cache_error = {"type": "EXECUTION_ERROR", "message": f"not cached: {exc}"}
        else:
            try:
                key = broker.put(table)
                note_cached(frame, key)
            except DataExecError as exc:
                cache_error = {"type": exc.type, "message": exc.message}
        preview = table if table is not None else _loose_table(frame)
        payload: protocol.ResultPayload = {
            "kind": "dataframe",
            **protocol.table_payload(preview, max_rows, dtypes),  # type: ignore[typeddict-item]
            "cache_key": key,
            "cache_error": cache_error,
        }
        return payload

    def checkpoint(self, budget: int) -> _Payload:
        """The checkpoint pass the server asks for after each step (see frames.py)."""
        return _Payload(protocol.encode_payload(self.frames.checkpoint(budget)))

    def restore(self, keys: dict[str, str]) -> _Payload:
        """Bring checkpointed frames back into a fresh kernel (see frames.py)."""
        return _Payload(protocol.encode_payload(self.frames.restore(keys)))


class _Payload:
    """A pre-encoded JSON document, displayed under the result mimetype only."""

    def __init__(self, text: str) -> None:
        self.text = text

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> dict[str, str]:
        return {protocol.RESULT_MIMETYPE: self.text}


def _refuse_pip(line: str = "", cell: str | None = None) -> None:
    raise RuntimeError(PIP_MESSAGE)


def install(ipython: Any) -> None:
    """Register result capture, the helpers and the pip refusal in ``ipython``."""
    capture = ResultCapture(ipython)
    ipython.events.register("pre_run_cell", capture.pre_run_cell)
    ipython.events.register("post_run_cell", capture.post_run_cell)
    ipython.push({protocol.CAPTURE: capture}, interactive=False)
    helpers.install_helpers(ipython)
    for name in ("pip", "conda", "mamba"):
        ipython.register_magic_function(_refuse_pip, "line", name)
