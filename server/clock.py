"""Time as DataExec stores and shows it: aware UTC, ISO 8601 with a ``Z``."""

from __future__ import annotations

import datetime as dt


def now() -> dt.datetime:
    """The current time, aware, in UTC."""
    return dt.datetime.now(dt.UTC)


def utc(value: dt.datetime) -> dt.datetime:
    """A stored time as aware UTC (SQLite hands timestamps back without a zone)."""
    return value if value.tzinfo else value.replace(tzinfo=dt.UTC)


def from_timestamp(seconds: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(seconds, dt.UTC)


def iso(value: dt.datetime | float, timespec: str = "seconds") -> str:
    """``2026-12-05T09:15:30Z``: a time (or a POSIX timestamp) as answers and files show it."""
    moment = from_timestamp(value) if isinstance(value, (int, float)) else utc(value)
    return moment.astimezone(dt.UTC).isoformat(timespec=timespec).replace("+00:00", "Z")
