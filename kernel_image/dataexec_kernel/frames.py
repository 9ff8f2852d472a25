"""A session's named DataFrames inside its kernel: checkpoint them, restore them, list them.

After each step whose answer says the named frames changed (``changed``, cheap), the server
asks for a checkpoint pass (a silent request, after the client has its answer): every
DataFrame bound to a public name in the namespace is described
(rows, columns, dtypes, in-memory bytes) and, smallest first within the session's budget,
sent to the cache unless it is unchanged since its last checkpoint. A frame that is in the
cache already (the cell's result, or a frame just loaded by key) keeps that key rather than
being sent again. A checkpoint is the frame with its index (``protocol.arrow_table``), so a
restored frame equals the one checkpointed: index, columns and dtypes.

"Unchanged" is judged by a fingerprint: the object, its shape, columns, dtypes and a hash of
up to ``SAMPLE_ROWS`` rows spread over the frame, index labels included (a checkpoint keeps
the index, so a new index alone is a change). An in-place edit of a few values that
the sample misses is not seen until the frame changes otherwise; rebinding the name, adding
or dropping rows or columns, or changing a dtype always is.

When the server gives the session a fresh kernel, ``restore`` loads the checkpoints back
under their names before the next step runs.
"""

from __future__ import annotations

import json
from typing import Any

from dataexec_kernel import answers, broker, protocol

SAMPLE_ROWS = 2048
NAME_CHARS = 256  # a longer column name is cut (and said so)
LISTED = 10  # columns a warning names, then "and N more"
# Names the helpers own; never checkpointed as the user's frames.
RESERVED = frozenset({"result_df", "input_data"})


def fingerprint(frame: Any) -> tuple[Any, ...]:
    """What changes when a frame does (see the module docstring)."""
    import pandas as pd

    rows = len(frame)
    step = max(1, rows // SAMPLE_ROWS)
    try:
        sample = int(pd.util.hash_pandas_object(frame.iloc[::step], index=True).sum())
    except (TypeError, ValueError):  # unhashable cells (lists, dicts): shape and dtypes only
        sample = None
    dtypes = tuple(str(t) for t in frame.dtypes)
    return (id(frame), frame.shape, tuple(map(str, frame.columns)), dtypes, sample)


# Frames that are in the cache already, by object: this step's results, sql()'s results
# (the broker keeps them) and loaded frames.
# A checkpoint of one that is still unchanged reuses its key instead of sending it again.
CACHED: dict[int, tuple[tuple[Any, ...], str]] = {}


def note_cached(frame: Any, key: str) -> None:
    CACHED[id(frame)] = (fingerprint(frame), key)


def cached_key(frame: Any, mark: tuple[Any, ...] | None = None) -> str | None:
    """The key ``frame`` is in the cache under already, if it is unchanged since (``mark``:
    its fingerprint, when the caller has it)."""
    known = CACHED.get(id(frame))
    if known is None or known[0] != (mark or fingerprint(frame)):
        return None
    return known[1]


def storable(frame: Any) -> tuple[Any, list[str]]:
    """``frame`` as the cache keeps it and an answer shows it, and what that changed.

    Column names become unique strings: ``None`` is ``column_<i>`` (its position), a tuple
    is joined with ``_`` (as a MultiIndex is), anything else is ``str`` of it, NUL becomes
    U+FFFD, a name past ``NAME_CHARS`` is cut, and a repeated name gets ``_1``, ``_2``...
    An object column whose values Arrow cannot hold (integers past 64 bits,
    ``Decimal('1e1000')``, mixed types, dicts of different shapes) is kept as text: JSON for
    dicts, lists and tuples, hex for bytes, ``str`` for the rest. The kernel's own frame is
    left as it is.
    """
    names = _unique_names(list(frame.columns))
    pairs = list(zip(frame.columns, names, strict=True))
    renamed = [f"{old!r} -> {new!r}" for old, new in pairs if str(old) != new]
    as_text = [new for old, new in pairs if not isinstance(old, str) and str(old) == new]
    warnings = []
    if renamed:
        warnings.append(f"columns renamed to unique strings: {_listing(renamed)}")
    if as_text:
        warnings.append(f"column names that were not strings are now text: {_listing(as_text)}")
    if renamed or as_text:
        frame = frame.set_axis(names, axis=1)
    texts = [n for i, n in enumerate(names) if not _arrow_holds(frame.iloc[:, i])]
    if texts:
        frame = frame.copy(deep=False)
        for name in texts:
            frame[name] = frame[name].map(_as_text).astype(object)
        warnings.append(
            f"columns kept as text (Arrow cannot hold their values): {_listing(texts, repr)}"
        )
    return frame, warnings


def _listing(items: list[str], show: Any = str) -> str:
    more = f" and {len(items) - LISTED} more" if len(items) > LISTED else ""
    return ", ".join(map(show, items[:LISTED])) + more


def _unique_names(columns: list[Any]) -> list[str]:
    taken: set[str] = set()
    names = []
    for i, name in enumerate(columns):
        if name is None or (isinstance(name, float) and name != name):
            text = f"column_{i}"
        elif isinstance(name, tuple):
            text = "_".join(map(str, name)).strip("_") or f"column_{i}"
        else:
            text = str(name)
        candidate = base = text.replace("\x00", "\ufffd")[:NAME_CHARS]
        n = 1
        while candidate in taken:
            candidate, n = f"{base}_{n}", n + 1
        taken.add(candidate)
        names.append(candidate)
    return names


def _arrow_holds(column: Any) -> bool:
    """Whether Arrow, and then Parquet, can hold this column as it is."""
    import pyarrow as pa

    if column.dtype != object:
        return True
    try:
        return _parquet_holds(pa.array(column, from_pandas=True).type)
    except (pa.ArrowException, TypeError, ValueError, OverflowError):
        return False


def _parquet_holds(kind: Any) -> bool:
    import pyarrow as pa

    if pa.types.is_struct(kind) and kind.num_fields == 0:  # dicts that are all empty
        return False
    return all(_parquet_holds(kind.field(i).type) for i in range(kind.num_fields))


def _as_text(value: Any) -> Any:
    if value is None or (isinstance(value, float) and value != value):
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, (dict, list, tuple)):
        value = list(value) if isinstance(value, tuple) else value
        return json.dumps(answers.json_value(value), default=str)
    return str(value)


def _mark(taken: tuple[Any, ...] | None, frame: Any) -> tuple[Any, ...]:
    """The fingerprint ``changed`` took of this very frame, else a new one."""
    return taken if taken is not None and taken[0] == id(frame) else fingerprint(frame)


def _frame_bytes(frame: Any) -> int:
    return int(frame.memory_usage(index=True, deep=True).sum())


class Frames:
    """The kernel's record of which named frames were checkpointed, and under which keys."""

    def __init__(self, ipython: Any) -> None:
        self.ipython = ipython
        self.checkpoints: dict[str, tuple[tuple[Any, ...], str]] = {}
        self.seen: dict[str, tuple[Any, ...]] = {}  # every named frame at the last pass
        # The fingerprints ``changed`` took after this step's cell: the pass that follows
        # at once (no cell runs between) uses them rather than hashing every frame again.
        self.taken: dict[str, tuple[Any, ...]] = {}

    def changed(self) -> bool:
        """Whether a checkpoint pass would find anything new (cheap: fingerprints only)."""
        frames = self.named_frames()
        self.taken = {name: fingerprint(frame) for name, frame in frames.items()}
        if self.taken != self.seen:
            return True
        CACHED.clear()  # no pass follows to reuse them
        return False

    def named_frames(self) -> dict[str, Any]:
        import pandas as pd

        return {
            name: value
            for name, value in self.ipython.user_ns.items()
            if isinstance(value, pd.DataFrame) and not name.startswith("_") and name not in RESERVED
        }

    def checkpoint(self, budget: int) -> protocol.CheckpointPayload:
        """Describe every named frame, checkpoint changed ones within ``budget``."""
        frames = self.named_frames()
        taken, self.taken = self.taken, {}
        self.seen = {name: _mark(taken.get(name), frame) for name, frame in frames.items()}
        sizes = {name: _frame_bytes(frame) for name, frame in frames.items()}
        described = []
        used = 0
        for name in sorted(frames, key=lambda n: (sizes[n], n)):
            frame = frames[name]
            entry: protocol.FrameInfo = {
                "name": name,
                "rows": int(len(frame)),
                "columns": [str(c) for c in frame.columns],
                "dtypes": {str(c): str(t) for c, t in frame.dtypes.items()},
                "bytes": sizes[name],
                "cache_key": None,
                "changed": False,
                "note": None,
            }
            described.append(entry)
            if used + sizes[name] > budget:
                entry["note"] = "over the session's checkpoint budget: not restorable"
                self.checkpoints.pop(name, None)
                continue
            used += sizes[name]
            if frame.shape[1] > answers.MAX_RESULT_COLUMNS:
                entry["note"] = "wider than the column cap of a result: not restorable"
                self.checkpoints.pop(name, None)
                continue
            mark = self.seen[name]
            known = self.checkpoints.get(name)
            if known is None or known[0] != mark:
                try:
                    key = cached_key(frame, mark)
                    if key is None:
                        stored, changes = storable(frame)  # restored as the cache keeps it
                        key = broker.put(protocol.arrow_table(stored), "checkpoint", name)
                        entry["note"] = "; ".join(changes) or None
                except Exception as exc:  # a frame Arrow cannot hold, a full quota, ...
                    entry["note"] = f"not checkpointed: {exc}"
                    self.checkpoints.pop(name, None)
                    continue
                known = (mark, key)
                self.checkpoints[name] = known
                entry["changed"] = True
            entry["cache_key"] = known[1]
        for gone in set(self.checkpoints) - set(frames):
            del self.checkpoints[gone]
        CACHED.clear()
        return {"frames": described}

    def restore(self, keys: dict[str, str]) -> protocol.RestorePayload:
        """Load each checkpoint under its name; what came back and what did not."""
        restored, failed = [], {}
        for name, key in keys.items():
            if not name.isidentifier():
                failed[name] = "not a valid name"
                continue
            try:
                frame = broker.load_frame(key)
            except Exception as exc:
                failed[name] = str(exc)
                continue
            self.ipython.user_ns[name] = frame
            self.checkpoints[name] = (fingerprint(frame), key)
            self.seen[name] = self.checkpoints[name][0]
            restored.append(name)
        return {"restored": restored, "failed": failed}
