"""Result capture inside a DataExec kernel, installed by ``%load_ext dataexec_kernel``.

Before each cell ``result_df`` is cleared; after it, the cell's result is kept: ``result_df``
if the cell set it, else the value of its last expression. The server then asks for it with
the user expression ``protocol.result_expression(max_rows)``, which answers one JSON
document (a ``protocol.ResultPayload``) under ``protocol.RESULT_MIMETYPE``, already a JSON
string, so NaN, dates and numpy scalars are settled here and never reach the kernel's own
JSON encoder. A frame goes to the cache as one Arrow table, index and pandas metadata
included (``protocol.arrow_table``), so ``load(key)`` gives back the same frame; its preview
and statistics come from ``answers.table_payload`` on the columns of that same table an
answer shows (``protocol.answer_columns``): one implementation for the server's SQL and
the kernel's frames.

**What an answer shows of a frame's index** (its columns, preview rows, statistics, and the
CSV and JSON downloads of its key):

- Left out, as ``to_dict("records")`` would: an *unnamed, single-level, integer* index. That
  is the row numbers pandas made: a RangeIndex from any start (``head``, ``tail``,
  ``iloc[5:]``, a fresh frame) or the labels filtering, sorting, ``sample``,
  ``drop_duplicates`` or ``concat`` leave behind, in any order, unique or not
  (``d[d.n > 1]`` answers ``["n"]``, not ``["index", "n"]``).
- Shown as columns, first, under ``reset_index``'s names: a named index (``set_index``, a
  groupby key, ``value_counts()``, whose index pandas names after the counted column,
  ``pivot_table``, ``rename_axis``), every level of a MultiIndex (a groupby on several
  keys), and an unnamed index of any other type: strings (``describe()``'s statistic
  names, ``df.T``'s former column names) become a column ``index``, and so do dates
  (``resample``) and floats.

Why: an unnamed integer index is what pandas numbers rows with, while any other index holds
values someone put there. An integer index set on purpose but left unnamed
(``df.index = ids``) is the rare casualty; naming it (``rename_axis("id")``) shows it.
Columns that are a MultiIndex (``agg`` with several functions) are joined into flat names.
"""

from __future__ import annotations

import datetime as dt
import decimal
from typing import Any

from dataexec_kernel import answers, broker, helpers, protocol
from dataexec_kernel.errors import DataExecError

PIP_MESSAGE = (
    "Installing packages inside a DataExec kernel is not possible (no network, "
    "read-only environment). Ask the operator to add the package to the kernel "
    "image (kernel_image/requirements.txt, then `dataexec build-image`)."
)


def as_frame(value: Any) -> Any:
    """The value as the DataFrame of the answer and the cache, or None when it is not
    frame-like. Its index is kept: the cache keeps it, ``protocol.answer_columns`` decides
    what of it the answer shows."""
    import pandas as pd

    if isinstance(value, pd.Series):
        value = value.to_frame(name=value.name if value.name is not None else "value")
    if not isinstance(value, pd.DataFrame):
        return None
    if isinstance(value.columns, pd.MultiIndex):
        value = value.set_axis(["_".join(map(str, c)).strip("_") for c in value.columns], axis=1)
    return value


def _field_dtypes(frame: Any) -> list[str]:
    """The pandas dtype of each column of ``protocol.arrow_table(frame)``: the data columns,
    then the index levels (where pyarrow puts those it stores)."""
    index = frame.index
    levels = [str(index.get_level_values(i).dtype) for i in range(index.nlevels)]
    return [str(t) for t in frame.dtypes] + levels


def _loose_table(frame: Any) -> tuple[Any, list[str]]:
    """A table of any frame as an answer shows it, for its preview only, and its dtypes:
    column by column, text where Arrow cannot hold a column (duplicate or odd names are
    kept as text)."""
    import pyarrow as pa

    index = frame.index
    columns: list[tuple[str, Any]] = []
    if protocol.index_shown(list(index.names), index.inferred_type == "integer"):
        names = protocol.index_names(list(index.names), {str(c) for c in frame.columns})
        columns += [(name, index.get_level_values(i)) for i, name in enumerate(names)]
    columns += [(str(c), frame.iloc[:, i]) for i, c in enumerate(frame.columns)]
    arrays = []
    for _, values in columns:
        try:
            arrays.append(pa.array(values, from_pandas=True))
        except (pa.ArrowException, TypeError, ValueError, OverflowError):
            arrays.append(pa.array(values.astype(str), from_pandas=True))
    table = pa.Table.from_arrays(arrays, names=[name for name, _ in columns])
    return table, [str(values.dtype) for _, values in columns]


def frame_answer(
    frame: Any, table: Any, max_rows: int, max_bytes: int = protocol.PREVIEW_BYTES
) -> protocol.TablePayload:
    """Preview, row count, types and statistics of what an answer shows of ``frame``: the
    answer's columns of ``table``, its ``protocol.arrow_table``, or when Arrow could not
    hold the frame (``table`` None) the same columns taken one by one."""
    if table is None:
        preview, dtypes = _loose_table(frame)
    else:
        plan = protocol.answer_columns(table.schema)
        fields = _field_dtypes(frame)
        preview, dtypes = protocol.shown(table, plan), [fields[i] for i, _ in plan]
    return answers.table_payload(preview, max_rows, dtypes, max_bytes)


def _scalar_payload(value: Any) -> protocol.ResultPayload:
    return {
        "kind": "scalar",
        "columns": ["value"],
        "rows": [[answers.json_value(value)]],
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

    def result(self, max_rows: int, max_bytes: int = protocol.PREVIEW_BYTES) -> _Payload:
        """The cell's result, as the JSON the server reads (a preview within ``max_bytes``)."""
        value = self.value
        frame = as_frame(value)
        payload: protocol.ResultPayload
        if frame is not None:
            payload = self._frame_payload(frame, max_rows, max_bytes)
        elif _is_scalar(value):
            payload = _scalar_payload(value)
        else:
            payload = {"kind": "none"}
        payload["frames_changed"] = self.frames.changed()
        return _Payload(protocol.encode_payload(payload))

    def _frame_payload(self, frame: Any, max_rows: int, max_bytes: int) -> protocol.ResultPayload:
        """Preview and statistics of the answer's columns of the table the cache gets, and
        the frame's cache key (or why there is none: no broker, over a cap, the quota,
        wider than ``answers.MAX_RESULT_COLUMNS``, columns Arrow cannot hold).

        The cache gets the frame as ``frames.storable`` makes it (unique string column
        names, values Arrow cannot hold as text), and the answer says what that changed.
        """
        from dataexec_kernel.frames import cached_key, note_cached, storable

        key, cache_error, table = None, None, None
        width, cap = frame.shape[1], answers.MAX_RESULT_COLUMNS
        original, warnings = frame, []
        if width > cap:  # neither answered nor cached whole: too wide to be either
            frame = frame.iloc[:, :cap]
            warnings.append(f"the result has {width} columns: this answer shows the first {cap}")
            cache_error = {
                "type": "OUTPUT_TOO_LARGE",
                "message": f"not cached: {width} columns, over the cap of {cap}; select fewer",
            }
        frame, changes = storable(frame)
        warnings += changes
        try:
            table = protocol.arrow_table(frame)
        except Exception as exc:
            cache_error = {"type": "EXECUTION_ERROR", "message": f"not cached: {exc}"}
        if table is not None and cache_error is None:
            # A frame sql() or load() gave, unchanged, is in the cache already: its key.
            key = cached_key(original) if frame is original else None
            try:
                if key is None:
                    key = broker.put(table)
                    note_cached(original, key)
            except DataExecError as exc:
                cache_error = {"type": exc.type, "message": exc.message}
            except OSError as exc:  # the broker hung up (a refused frame it did not read)
                cache_error = {"type": "INTERNAL", "message": f"not cached: {exc}"}
        answer = frame_answer(frame, table, max_rows, max_bytes)
        warnings += answer.pop("warnings", [])
        payload: protocol.ResultPayload = {
            "kind": "dataframe",
            **answer,  # type: ignore[typeddict-item]
            "cache_key": key,
            "cache_error": cache_error,
        }
        if warnings:
            payload["warnings"] = warnings
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
    # No output history (Out, _1, _2, ...): each frame a cell showed would stay in memory
    # for good, and a session that shows a large frame a few times runs out of it. The last
    # three results (_, __, ___) are still there, as in IPython.
    ipython.displayhook.do_full_cache = 0
    ipython.events.register("pre_run_cell", capture.pre_run_cell)
    ipython.events.register("post_run_cell", capture.post_run_cell)
    ipython.push({protocol.CAPTURE: capture}, interactive=False)
    helpers.install_helpers(ipython)
    for name in ("pip", "conda", "mamba"):
        ipython.register_magic_function(_refuse_pip, "line", name)
