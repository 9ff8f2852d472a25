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

from typing import Any

from dataexec_kernel import broker, protocol

SAMPLE_ROWS = 2048
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


# Frames that are in the cache already, by object: this step's results and loaded frames.
# A checkpoint of one that is still unchanged reuses its key instead of sending it again.
CACHED: dict[int, tuple[tuple[Any, ...], str]] = {}


def note_cached(frame: Any, key: str) -> None:
    CACHED[id(frame)] = (fingerprint(frame), key)


def _frame_bytes(frame: Any) -> int:
    return int(frame.memory_usage(index=True, deep=True).sum())


class Frames:
    """The kernel's record of which named frames were checkpointed, and under which keys."""

    def __init__(self, ipython: Any) -> None:
        self.ipython = ipython
        self.checkpoints: dict[str, tuple[tuple[Any, ...], str]] = {}
        self.seen: dict[str, tuple[Any, ...]] = {}  # every named frame at the last pass

    def changed(self) -> bool:
        """Whether a checkpoint pass would find anything new (cheap: fingerprints only)."""
        frames = self.named_frames()
        if frames.keys() != self.seen.keys() or any(
            fingerprint(frame) != self.seen[name] for name, frame in frames.items()
        ):
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
        self.seen = {name: fingerprint(frame) for name, frame in frames.items()}
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
            mark = self.seen[name]
            known = self.checkpoints.get(name)
            if known is None or known[0] != mark:
                cached = CACHED.get(id(frame))
                try:
                    key = (
                        cached[1]
                        if cached and cached[0] == mark
                        else broker.put(protocol.arrow_table(frame), "checkpoint", name)
                    )
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
